"""Config loading, durations and ``edge-agent check``: one actionable line per problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.commands.cli import EXIT_CONFIG, main
from agent.config.durations import format_duration, parse_duration
from agent.config.load import ConfigError, key_path, load_config
from agent.config.model import installed
from protocols.modbus.config import ModbusSourceConfig

MS = 1_000_000
S = 1_000_000_000

VALID = """\
[agent]
gateway_id = "gw-check"
metrics = ""

[batch]
window = "10s"
lateness = "2s"

[[sources]]
name = "press1"
protocol = "modbus"
url = "modbus+tcp://127.0.0.1:5020"
unit_id = 3

  [[sources.tags]]
  name = "speed"
  address = "hr:0"
  rate = "100ms"

  [[sources.tags]]
  name = "temperature"
  address = "hr:2"
  type = "float32"
  rate = "100ms"
  unit = "degC"

  [[sources.tags]]
  name = "running"
  address = "coil:5"
  rate = "1s"

[[sources]]
name = "wave1"
protocol = "template"

  [[sources.tags]]
  name = "wave"
  rate = "500ms"

[[uplinks]]
type = "parquet"
name = "lake"
path = "lake"
"""


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``check`` probes that data_dir and local stores can be written: relative ones, and
    the examples', resolve in the test's own folder, writable by whoever runs the tests."""
    monkeypatch.chdir(tmp_path)


def _write(tmp_path: Path, text: str, name: str = "plant.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["check", "-c", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def _modbus(tags: str, source_extra: str = "", top: str = "") -> str:
    return (
        f"{top}\n"
        '[[sources]]\nname = "plc1"\nprotocol = "modbus"\n'
        f'url = "modbus+tcp://10.0.0.5"\n{source_extra}\n{tags}'
    )


GOOD_TAG = '[[sources.tags]]\nname = "ok"\naddress = "hr:0"\n'


# --- durations ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("100ms", 100_000_000),
        ("1.5s", 1_500_000_000),
        ("5m", 300_000_000_000),
        ("5min", 300_000_000_000),
        ("2h", 7_200_000_000_000),
        ("1d", 86_400_000_000_000),
        ("250us", 250_000),
        ("250µs", 250_000),
        ("7ns", 7),
        (" 10 s ", 10_000_000_000),
        ("0.1s", 100_000_000),
    ],
)
def test_parse_duration(text: str, ns: int) -> None:
    result = parse_duration(text)
    assert result == ns
    assert isinstance(result, int)


@pytest.mark.parametrize(
    "value", ["10", "fast", "-1s", "0s", "0ms", "1 sec", "", "1e3ms", "s", 10, 1.5, None, True]
)
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError, match=r"duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (100 * MS, "100ms"),
        (1_500 * MS, "1500ms"),
        (S, "1s"),
        (90 * S, "90s"),
        (300 * S, "5m"),
        (7_200 * S, "2h"),
        (250_000, "250us"),
        (1_234, "1234ns"),
    ],
)
def test_format_duration(ns: int, text: str) -> None:
    assert format_duration(ns) == text


@given(st.integers(min_value=1, max_value=2**53))
def test_format_then_parse_roundtrips_exactly(ns: int) -> None:
    assert parse_duration(format_duration(ns)) == ns


def test_key_path() -> None:
    assert key_path(("sources", 0, "tags", 2, "address")) == "sources[0].tags[2].address"
    assert key_path(("window",), "batch") == "batch.window"
    assert key_path((1, "name"), "sources") == "sources[1].name"


# --- loading ------------------------------------------------------------------------------


def test_valid_config_loads_with_driver_models(tmp_path: Path) -> None:
    loaded = load_config(_write(tmp_path, VALID))
    config = loaded.config
    assert config.agent.gateway_id == "gw-check"
    assert config.batch.window == 10 * S
    assert config.batch.lateness == 2 * S
    assert [s.name for s in config.sources] == ["press1", "wave1"]
    assert [s.protocol for s in config.sources] == ["modbus", "template"]
    press = config.sources[0]
    assert [t.rate for t in press.tags] == [100 * MS, 100 * MS, S]
    assert press.tags[1].type == "float32"  # type: ignore[attr-defined]
    assert press.unit_id == 3  # type: ignore[attr-defined]
    assert config.sources[1].tags[0].rate == 500 * MS
    assert sorted(loaded.drivers) == ["press1", "wave1"]
    assert loaded.drivers["press1"].__name__ == "ModbusDriver"
    assert loaded.drivers["wave1"].__name__ == "TemplateDriver"
    assert len(loaded.config_hash) == 16


def test_an_rtu_source_names_its_serial_line(tmp_path: Path) -> None:
    text = _modbus(GOOD_TAG, source_extra='baudrate = 9600\nparity = "N"\nstopbits = 2').replace(
        "modbus+tcp://10.0.0.5", "modbus+rtu:///dev/ttyUSB0"
    )
    source = load_config(_write(tmp_path, text, "rtu.toml")).config.sources[0]
    assert isinstance(source, ModbusSourceConfig)
    assert source.is_serial
    assert source.serial_port == "/dev/ttyUSB0"
    assert (source.baudrate, source.parity, source.stopbits, source.bytesize) == (9600, "N", 2, 8)


def test_config_hash_is_stable_and_content_sensitive(tmp_path: Path) -> None:
    first = load_config(_write(tmp_path, VALID, "a.toml")).config_hash
    # Formatting and comments do not change the hash; content does.
    reformatted = "# comment\n" + VALID.replace('window = "10s"', 'window   =   "10000ms"')
    second = load_config(_write(tmp_path, reformatted, "b.toml")).config_hash
    changed = load_config(_write(tmp_path, VALID.replace('"2s"', '"3s"'), "c.toml")).config_hash
    assert first == second
    assert first != changed


def test_config_error_lists_every_problem_one_per_line(tmp_path: Path) -> None:
    text = _modbus(
        '[[sources.tags]]\nname = "a"\naddress = "hr:70000"\n'
        '[[sources.tags]]\nname = "b"\naddress = "hr:1"\ntype = "float33"\n',
        top='[batch]\nwindow = "soon"\n',
    )
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    keys = [key for key, _ in info.value.problems]
    assert keys == ["sources[0].tags[0].address", "sources[0].tags[1].type", "batch.window"]
    assert len(lines) == 3
    assert all(line.startswith(f"{path}: ") for line in lines)


# --- edge-agent check ---------------------------------------------------------------------


def test_check_valid_config_prints_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, VALID)
    code, out, err = _check(path, capsys)
    assert code == 0
    assert err == ""
    lines = out.splitlines()
    assert lines[0].startswith(f"{path}: OK (config hash ")
    assert "gateway gw-check" in out
    assert "window 10s" in out
    assert "lateness 2s" in out
    press = next(line for line in lines if line.startswith("source press1"))
    assert "(modbus)" in press
    assert "3 tags" in press
    assert "2 @ 100ms, 1 @ 1s" in press
    assert "modbus+tcp://127.0.0.1:5020 unit 3" in press
    # hr:0 and hr:2 at 100 ms make one block; coil:5 at 1 s another.
    assert "2 block reads" in press
    wave = next(line for line in lines if line.startswith("source wave1"))
    assert "(template)" in wave
    assert "1 tags (1 @ 500ms)" in wave
    assert "uplink lake (parquet) -> lake" in lines


def test_check_marks_disabled_sources(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = VALID.replace('protocol = "template"', 'protocol = "template"\nenabled = false')
    code, out, _ = _check(_write(tmp_path, text), capsys)
    assert code == 0
    assert "source wave1 (template) [disabled]" in out
    assert "source press1 (modbus): " in out


def test_check_data_dir_below_a_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "plain").write_text("")
    state = tmp_path / "plain" / "state"
    path = _write(tmp_path, VALID.replace('metrics = ""', f'metrics = ""\ndata_dir = "{state}"'))
    code, out, err = _check(path, capsys)
    assert code == EXIT_CONFIG
    assert out == ""
    assert err.splitlines() == [
        f"{path}: agent.data_dir: cannot create {state}: {tmp_path / 'plain'} is not a directory"
    ]


BROKEN = {
    "unknown_protocol": (
        '[[sources]]\nname = "x"\nprotocol = "modbuss"\n' + GOOD_TAG,
        "sources[0].protocol",
        ["unknown protocol 'modbuss'; installed drivers: "],
    ),
    "missing_protocol": (
        '[[sources]]\nname = "x"\n' + GOOD_TAG,
        "sources[0].protocol",
        ["required key is missing"],
    ),
    "bad_address": (
        _modbus(GOOD_TAG + '[[sources.tags]]\nname = "b"\naddress = "hr:70000"\n'),
        "sources[0].tags[1].address",
        ["70000", "65535"],
    ),
    "bad_address_table": (
        _modbus(GOOD_TAG + '[[sources.tags]]\nname = "b"\naddress = "xx:5"\n'),
        "sources[0].tags[1].address",
        ["hr:N", "'xx:5'"],
    ),
    "bad_duration": (
        _modbus(GOOD_TAG, top='[batch]\nwindow = "fast"\n'),
        "batch.window",
        ["duration", "'fast'"],
    ),
    "integer_duration": (
        _modbus('[[sources.tags]]\nname = "a"\naddress = "hr:0"\nrate = 100\n'),
        "sources[0].tags[0].rate",
        ["duration", "100"],
    ),
    "negative_duration": (
        _modbus(GOOD_TAG, top='[batch]\nlateness = "-1s"\n'),
        "batch.lateness",
        ["duration", "'-1s'"],
    ),
    "missing_tag_name": (
        _modbus('[[sources.tags]]\naddress = "hr:0"\n'),
        "sources[0].tags[0].name",
        ["required key is missing"],
    ),
    "missing_source_name": (
        '[[sources]]\nprotocol = "template"\n[[sources.tags]]\nname = "w"\n',
        "sources[0].name",
        ["required key is missing"],
    ),
    "missing_url": (
        '[[sources]]\nname = "p"\nprotocol = "modbus"\n' + GOOD_TAG,
        "sources[0].url",
        ["required key is missing"],
    ),
    "wrong_type_name": (
        _modbus('[[sources.tags]]\nname = "a"\naddress = "hr:0"\ntype = "float33"\n'),
        "sources[0].tags[0].type",
        ["float32", "'float33'"],
    ),
    "wrong_value_type": (
        _modbus(GOOD_TAG, source_extra='unit_id = "one"'),
        "sources[0].unit_id",
        ["integer", "'one'"],
    ),
    "unit_id_out_of_range": (
        _modbus(GOOD_TAG, source_extra="unit_id = 256"),
        "sources[0].unit_id",
        ["255"],
    ),
    "bad_url": (
        _modbus(GOOD_TAG).replace("modbus+tcp://10.0.0.5", "tcp://10.0.0.5"),
        "sources[0].url",
        ["modbus+tcp://host[:port]"],
    ),
    "serial_keys_on_tcp": (
        _modbus(GOOD_TAG, source_extra="baudrate = 9600"),
        "sources[0]",
        ["baudrate: for a modbus+rtu:// url only"],
    ),
    "rtu_without_a_port": (
        _modbus(GOOD_TAG).replace("modbus+tcp://10.0.0.5", "modbus+rtu://"),
        "sources[0].url",
        ["modbus+rtu:///dev/<serial port>"],
    ),
    "bad_parity": (
        _modbus(GOOD_TAG, source_extra='parity = "X"').replace(
            "modbus+tcp://10.0.0.5", "modbus+rtu:///dev/ttyUSB0"
        ),
        "sources[0].parity",
        ["'N', 'E' or 'O'", "'X'"],
    ),
    "unknown_key": (
        _modbus('[[sources.tags]]\nname = "a"\naddress = "hr:0"\ndeadbnad = 0.5\n'),
        "sources[0].tags[0].deadbnad",
        ["unknown key"],
    ),
    "unknown_section": (
        _modbus(GOOD_TAG, top='[agnet]\ngateway_id = "x"\n'),
        "agnet",
        ["unknown key"],
    ),
    "duplicate_tag": (
        _modbus(GOOD_TAG + '[[sources.tags]]\nname = "ok"\naddress = "hr:1"\n'),
        "sources[0].tags",
        ["'ok'", "twice"],
    ),
    "bool_on_register": (
        _modbus('[[sources.tags]]\nname = "a"\naddress = "hr:0"\ntype = "bool"\n'),
        "sources[0].tags[0]",
        ['"hr:0.0"'],
    ),
    "bad_tag_name": (
        _modbus('[[sources.tags]]\nname = "speed rpm"\naddress = "hr:0"\n'),
        "sources[0].tags[0].name",
        ["pattern", "'speed rpm'"],
    ),
    "no_tags": (
        '[[sources]]\nname = "p"\nprotocol = "modbus"\nurl = "modbus+tcp://h"\n',
        "sources[0].tags",
        ["required key is missing"],
    ),
    "no_sources": (
        '[agent]\ngateway_id = "x"\n',
        "sources",
        ["at least one"],
    ),
    "sources_not_array": (
        '[sources]\nname = "x"\n',
        "sources",
        ["array of tables"],
    ),
    "bad_metrics": (
        _modbus(GOOD_TAG, top='[agent]\nmetrics = "localhost"\n'),
        "agent.metrics",
        ["host:port"],
    ),
    "spool_overflow": (
        _modbus(GOOD_TAG, top='[spool]\noverflow = "discard"\n'),
        "spool.overflow",
        ["'drop_oldest' or 'stop_acquiring'", "'discard'"],
    ),
    "spool_cap": (
        _modbus(GOOD_TAG, top="[spool]\nmax_bytes = 0\n"),
        "spool.max_bytes",
        ["greater than or equal to 1"],
    ),
    "resample_method": (
        _modbus('[[sources.tags]]\nname = "a"\naddress = "hr:0"\nresample = "cubic"\n'),
        "sources[0].tags[0].resample",
        ["'linear'", "'cubic'"],
    ),
    "resample_period": (
        _modbus(GOOD_TAG, top='[resample]\nperiod = "fast"\n'),
        "resample.period",
        ["'fast'"],
    ),
    "snap_not_bool": (
        _modbus(GOOD_TAG, source_extra='snap = "maybe"'),
        "sources[0].snap",
        ["boolean", "'maybe'"],
    ),
    "clock_threshold": (
        _modbus(GOOD_TAG, source_extra='clock_threshold = "soon"'),
        "sources[0].clock_threshold",
        ["'soon'"],
    ),
    "correct_clock_needs_source_time": (
        '[[sources]]\nname = "cnc"\nprotocol = "opcua"\nurl = "opc.tcp://h:4840"\n'
        'timestamp = "server"\ncorrect_clock = true\n'
        '[[sources.tags]]\nname = "t"\nnode = "ns=2;s=T"\n',
        "sources[0]",
        ['timestamp = "source"'],
    ),
    "bad_compression": (
        _modbus(GOOD_TAG, top='[[uplinks]]\ntype = "parquet"\ncompression = "rar"\n'),
        "uplinks[0].compression",
        ["'rar'"],
    ),
    "unknown_uplink_type": (
        _modbus(GOOD_TAG, top='[[uplinks]]\ntype = "kafka"\n'),
        "uplinks[0]",
        ['"parquet", "mqtt", "postgres" or "sparkplug"'],
    ),
    "quoted_integer": (
        _modbus(GOOD_TAG, source_extra='unit_id = "1"'),
        "sources[0].unit_id",
        ["expected an integer", "'1'", "drop the quotes"],
    ),
    "quoted_float": (
        _modbus('[[sources.tags]]\nname = "a"\naddress = "hr:0"\nscale = "0.1"\n'),
        "sources[0].tags[0].scale",
        ["expected a number", "'0.1'", "drop the quotes"],
    ),
    "quoted_boolean": (
        _modbus(GOOD_TAG, source_extra='enabled = "false"'),
        "sources[0].enabled",
        ["expected a boolean", "'false'", "drop the quotes"],
    ),
    "mqtt_url_credentials": (
        _modbus(GOOD_TAG, top='[[uplinks]]\ntype = "mqtt"\nurl = "mqtt://op:SECRET@h:1883"\n'),
        "uplinks[0].url",
        ["refused", "password_file/password_env", "***@h"],
    ),
    "postgres_dsn_password": (
        _modbus(
            GOOD_TAG,
            top='[[uplinks]]\ntype = "postgres"\ndsn = "postgresql://op:SECRET@h/db"\n',
        ),
        "uplinks[0].dsn",
        ["refused", "password_file/password_env"],
    ),
    "postgres_keyword_password": (
        _modbus(
            GOOD_TAG,
            top='[[uplinks]]\ntype = "postgres"\ndsn = "host=h dbname=db password=SECRET"\n',
        ),
        "uplinks[0].dsn",
        ["refused", "password_file/password_env"],
    ),
    "opcua_url_credentials": (
        '[[sources]]\nname = "cnc"\nprotocol = "opcua"\nurl = "opc.tcp://op:SECRET@h:4840"\n'
        '[[sources.tags]]\nname = "t"\nnode = "ns=2;s=T"\n',
        "sources[0].url",
        ["refused", "password_file/password_env"],
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_check_broken_config_exits_2_with_one_line(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, key, fragments = BROKEN[case]
    path = _write(tmp_path, text, f"{case}.toml")
    code, out, err = _check(path, capsys)
    assert code == EXIT_CONFIG == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"{path}: {key}: "), line
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert "SECRET" not in err  # a refused credential is never echoed


def test_unknown_protocol_lists_installed_drivers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, BROKEN["unknown_protocol"][0])
    code, _, err = _check(path, capsys)
    assert code == 2
    installed = err.strip().split("installed drivers: ", 1)[1].split(", ")
    assert {"modbus", "template"} <= set(installed)
    assert installed == sorted(installed)


def test_check_duplicate_source_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, _modbus(GOOD_TAG) + "\n" + _modbus(GOOD_TAG))
    code, out, err = _check(path, capsys)
    assert code == 2
    assert out == ""
    assert err.splitlines() == [
        f"{path}: sources: name 'plc1' of sources[1] is already used by sources[0]"
    ]


def test_check_reports_problems_of_several_sources_and_sections(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        '[batch]\nwindow = "1 second"\n'
        '[[sources]]\nname = "a"\nprotocol = "opc-ua"\n' + GOOD_TAG + "\n"
        '[[sources]]\nname = "b"\nprotocol = "modbus"\nurl = "modbus+tcp://h"\n'
        '[[sources.tags]]\nname = "t"\naddress = "coil:3.1"\n'
    )
    path = _write(tmp_path, text)
    code, _, err = _check(path, capsys)
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 3, err
    assert lines[0].startswith(f"{path}: sources[0].protocol: unknown protocol 'opc-ua'")
    assert lines[1].startswith(f"{path}: sources[1].tags[0].address: ")
    assert lines[2].startswith(f"{path}: batch.window: ")
    # The empty source list is a consequence of the source problems, not a problem of its own.
    assert not any(": sources: " in line for line in lines)


def test_check_invalid_toml_names_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, '[agent]\ngateway_id = "gw"\n\n[batch]\nwindow = 1s\n')
    code, out, err = _check(path, capsys)
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{path}: invalid TOML: ")
    assert "line 5" in lines[0]


def test_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nowhere.toml"
    code, out, err = _check(path, capsys)
    assert code == 2
    assert out == ""
    assert err.splitlines() == [f"{path}: file not found"]


def test_check_unreadable_encoding(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[agent]\ngateway_id = "gw"\n# Temp\xe9rature\n'.encode("latin-1"))
    code, _, err = _check(path, capsys)
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{path}: cannot read: ")


def test_check_as_a_real_process_has_no_traceback(tmp_path: Path) -> None:
    path = _write(tmp_path, BROKEN["bad_address"][0], "subprocess.toml")
    result = subprocess.run(
        [sys.executable, "-m", "agent.commands.cli", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"{path}: sources[0].tags[1].address: address 70000 is beyond 65535"
    ]


def test_check_protocol_of_the_wrong_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, '[[sources]]\nname = "plc1"\nprotocol = 5\n')
    code, _, err = _check(path, capsys)
    assert code == 2
    assert err.splitlines() == [f"{path}: sources[0].protocol: expected a protocol name, got 5"]


@pytest.mark.parametrize(
    "example",
    sorted((Path(__file__).parent.parent / "examples").glob("*.toml")),
    ids=lambda path: path.name,
)
def test_every_example_config_checks_clean(
    example: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _check(example, capsys)
    assert code == 0, err
    assert f"{example}: OK" in out


def test_an_optional_package_whose_parent_is_missing_is_not_installed() -> None:
    # a plain `pip install .` has no google.protobuf: the demo and check must not raise
    assert not installed("no_such_namespace_pkg.protobuf")
    assert installed("pydantic.fields")
