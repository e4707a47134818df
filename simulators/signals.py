"""Seeded CNC-like signals as vectorised pure functions of time.

Every signal is evaluated at PLC scan instants (integer nanoseconds) and depends only on
the seed and the instant, never on call history, so the value a simulator served at any
time can be recomputed exactly afterwards. Noise comes from a counter-based hash
(splitmix64) of (seed, signal, scan index) rather than a stateful generator.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

NS = 1_000_000_000
_SEGMENT_NS = 6 * NS  # spindle program step
_RAMP_NS = 3 * NS // 2
_SETPOINTS = np.array([0.0, 1500.0, 3000.0, 6000.0, 9000.0, 12000.0])
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """Counter-based hash: uint64 in, well-mixed uint64 out (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = (x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)) & _M64
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def uniform(seed: int, stream: int, counter: np.ndarray) -> np.ndarray:
    """Deterministic uniforms in [0, 1) for each counter value."""
    with np.errstate(over="ignore"):
        key = np.uint64(seed * 0x100000001B3 + stream * 0x9E3779B1) & _M64
        mixed = splitmix64(counter.astype(np.int64).view(np.uint64) ^ key)
    return (mixed >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def noise(seed: int, stream: int, counter: np.ndarray) -> np.ndarray:
    """Deterministic, roughly normal noise (mean 0, sd 1) from four uniforms."""
    total = sum(uniform(seed, stream * 4 + i, counter) for i in range(4))
    return (total - 2.0) * np.sqrt(3.0)


class CncSignals:
    """The signals of one simulated CNC machine, at ``scan_ns`` resolution."""

    def __init__(self, seed: int, scan_ns: int = 10_000_000) -> None:
        self.seed = seed
        self.scan_ns = scan_ns
        self.program = f"O{1000 + seed % 9000:04d}"
        self.functions: dict[str, Callable[[np.ndarray], np.ndarray]] = {
            "spindle_speed": self.spindle_speed,
            "torque": self.torque,
            "spindle_temp": self.spindle_temp,
            "coolant_temp": self.coolant_temp,
            "part_count": self.part_count,
            "position_x": self.position_x,
            "energy": self.energy,
            "feed_rate": self.feed_rate,
            "running": self.running,
            "alarm": self.alarm,
            "door_open": self.door_open,
            "coolant_on": self.running,
            "status_word": self.status_word,
            "vibration_rms": self.vibration_rms,
            "ambient_temp": self.ambient_temp,
            "estop_ok": self.estop_ok,
            "guard_closed": self.guard_closed,
            "alarm_code": self.alarm_code,
            "axis_x": self.axis_x,
            "axis_y": self.axis_y,
            "axis_z": self.axis_z,
            "vibration": self.vibration,
        }

    def scan_time(self, t_ns: np.ndarray) -> np.ndarray:
        """The scan instants whose images requests at ``t_ns`` are served from."""
        t = np.asarray(t_ns, dtype=np.int64)
        return t // self.scan_ns * self.scan_ns

    def scan_of(self, t_ns: int) -> int:
        """The scan instant a request at ``t_ns`` is served from."""
        return t_ns // self.scan_ns * self.scan_ns

    def _seconds(self, t_ns: np.ndarray) -> np.ndarray:
        return (np.asarray(t_ns, np.int64) % (86_400 * NS)) / NS

    def _setpoint(self, segment: np.ndarray) -> np.ndarray:
        pick = (uniform(self.seed, 1, segment) * len(_SETPOINTS)).astype(np.int64)
        return _SETPOINTS[pick]

    def spindle_speed(self, t_ns: np.ndarray) -> np.ndarray:
        t = np.asarray(t_ns, np.int64)
        segment = t // _SEGMENT_NS
        into = (t - segment * _SEGMENT_NS) / _RAMP_NS
        previous, target = self._setpoint(segment - 1), self._setpoint(segment)
        return previous + (target - previous) * np.clip(into, 0.0, 1.0)

    def torque(self, t_ns: np.ndarray) -> np.ndarray:
        k = np.asarray(t_ns, np.int64) // self.scan_ns
        return 4.0 + self.spindle_speed(t_ns) * 0.0025 + 0.3 * noise(self.seed, 2, k)

    def spindle_temp(self, t_ns: np.ndarray) -> np.ndarray:
        s = self._seconds(t_ns)
        k = np.asarray(t_ns, np.int64) // self.scan_ns
        return 38.0 + 6.0 * np.sin(2 * np.pi * s / 600.0) + 0.05 * noise(self.seed, 3, k)

    def coolant_temp(self, t_ns: np.ndarray) -> np.ndarray:
        s = self._seconds(t_ns)
        return 21.0 + 1.5 * np.sin(2 * np.pi * s / 300.0 + self.seed)

    def part_count(self, t_ns: np.ndarray) -> np.ndarray:
        return ((np.asarray(t_ns, np.int64) // (7 * NS)) % 1_000_000).astype(np.float64)

    def position_x(self, t_ns: np.ndarray) -> np.ndarray:
        s = self._seconds(t_ns)
        return np.round(150_000.0 * np.sin(2 * np.pi * s / 20.0))

    def energy(self, t_ns: np.ndarray) -> np.ndarray:
        return (np.asarray(t_ns, np.int64) // (NS // 2)).astype(np.float64) - 3.5e9

    def feed_rate(self, t_ns: np.ndarray) -> np.ndarray:
        s = self._seconds(t_ns)
        return 1200.0 + 300.0 * np.sin(2 * np.pi * s / 45.0)

    def running(self, t_ns: np.ndarray) -> np.ndarray:
        return (self.spindle_speed(t_ns) > 0).astype(np.float64)

    def alarm(self, t_ns: np.ndarray) -> np.ndarray:
        segment = np.asarray(t_ns, np.int64) // _SEGMENT_NS
        return (uniform(self.seed, 5, segment) < 0.15).astype(np.float64)

    def door_open(self, t_ns: np.ndarray) -> np.ndarray:
        segment = np.asarray(t_ns, np.int64) // _SEGMENT_NS
        idle = self.spindle_speed(t_ns) == 0
        return (idle & (uniform(self.seed, 6, segment) < 0.5)).astype(np.float64)

    def status_word(self, t_ns: np.ndarray) -> np.ndarray:
        return (
            self.running(t_ns)
            + 2 * self.alarm(t_ns)
            + 4 * self.door_open(t_ns)
            + 8 * self.running(t_ns)
        )

    def vibration_rms(self, t_ns: np.ndarray) -> np.ndarray:
        k = np.asarray(t_ns, np.int64) // self.scan_ns
        return 0.4 + self.spindle_speed(t_ns) / 6000.0 + 0.05 * np.abs(noise(self.seed, 7, k))

    def ambient_temp(self, t_ns: np.ndarray) -> np.ndarray:
        return 22.0 + 2.0 * np.sin(2 * np.pi * self._seconds(t_ns) / 3600.0)

    def estop_ok(self, t_ns: np.ndarray) -> np.ndarray:
        return np.ones(np.shape(t_ns))

    def guard_closed(self, t_ns: np.ndarray) -> np.ndarray:
        return 1.0 - self.door_open(t_ns)

    def alarm_code(self, t_ns: np.ndarray) -> np.ndarray:
        segment = np.asarray(t_ns, np.int64) // _SEGMENT_NS
        code = 1000 + (uniform(self.seed, 8, segment) * 50).astype(np.int64)
        return np.where(self.alarm(t_ns) > 0, code, 0).astype(np.float64)

    def bulk(self, t_ns: int, count: int) -> np.ndarray:
        """``count`` extra analog signals at one instant, for load tests."""
        phase = np.arange(count, dtype=np.float64) * 0.1
        seconds = (t_ns % (86_400 * NS)) / NS
        return 100.0 * np.sin(2 * np.pi * seconds / 10.0 + phase)

    # -- OPC UA CNC additions: positions in mm and a kHz vibration waveform ------------------

    def axis_x(self, t_ns: np.ndarray) -> np.ndarray:
        """X position in mm: ``position_x`` (um) rescaled, so both PLCs agree on the axis."""
        return self.position_x(t_ns) / 1000.0

    def axis_y(self, t_ns: np.ndarray) -> np.ndarray:
        """Y position in mm, on a 1 um grid like a real encoder."""
        s = self._seconds(t_ns)
        return np.round(100_000.0 * np.sin(2 * np.pi * s / 15.0 + 1.0)) / 1000.0

    def axis_z(self, t_ns: np.ndarray) -> np.ndarray:
        """Z position in mm (mostly below the work zero), on a 1 um grid."""
        s = self._seconds(t_ns)
        return np.round(-50_000.0 + 40_000.0 * np.sin(2 * np.pi * s / 8.0)) / 1000.0

    def vibration(self, t_ns: np.ndarray) -> np.ndarray:
        """Spindle vibration velocity (mm/s) at arbitrary instants, for kHz waveforms.

        Rotation frequency, its second harmonic and a 4-tooth pass frequency, with amplitudes
        growing with spindle speed, a 50 Hz mains hum and seeded noise keyed on the whole
        microsecond, so any sample rate that divides 1 MHz gives reproducible samples. The
        phase uses the time within the second: the setpoints are whole Hz, so plateaus are
        continuous across second boundaries.
        """
        t = np.asarray(t_ns, np.int64)
        rotation = self.spindle_speed(t) / 60.0
        within = (t % NS) / NS
        amplitude = 0.2 + rotation / 100.0
        phase = 2 * np.pi * within
        return (
            amplitude * np.sin(rotation * phase)
            + 0.3 * amplitude * np.sin(2 * rotation * phase + 0.5)
            + 0.2 * amplitude * np.sin(4 * rotation * phase + 1.0)
            + 0.05 * np.sin(50 * phase)
            + 0.05 * noise(self.seed, 9, t // 1000)
        )
