"""The offline install as plant IT runs it: deploy/build-wheelhouse.sh, then the
wheelhouse's install-offline.sh into a temporary root with no network (pip sees only the
wheelhouse), the installed agent against the installed simulator, upgrade and rollback,
and systemd-analyze on the unit rendered for that root.

The wheelhouse is built once per state of the sources and kept in
``~/.cache/edge-agent-tests/`` (``$XDG_CACHE_HOME``): a build downloads from the package
index (16-20 s here with pip's cache warm), a cached one costs nothing. Each install into
a new venv takes 15-26 s (pip unpacking pyarrow and numpy and compiling every module): the
module takes 45-70 s with a cached wheelhouse, 70-95 s with a build."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc
import pytest

import agent
from tests.conftest import read_store

REPO = Path(__file__).parents[2]
DEPLOY = REPO / "deploy"
pytestmark = pytest.mark.slow


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edge-agent-tests"


def sources_digest() -> str:
    """What the wheelhouse is made of: the package sources, their metadata, deploy/, and
    the Python it is built for."""
    digest = hashlib.sha256(f"{sys.version_info[:2]}".encode())
    roots = [REPO / name for name in ("agent", "protocols", "simulators", "deploy")]
    files = [REPO / "pyproject.toml", REPO / "README.md"]
    files += [path for root in roots for path in root.rglob("*") if path.is_file()]
    for path in sorted(files):
        if "__pycache__" in path.parts:
            continue
        digest.update(f"{path.relative_to(REPO)}\0{path.stat().st_mode & 0o111}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="module")
def wheelhouse() -> Path:
    """deploy/build-wheelhouse.sh's folder for these sources, from the cache if built."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"wheelhouse-{sources_digest()}"
    with open(cache / "wheelhouse.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time per machine
        if not (target / "SHA256SUMS").exists():
            for stale in cache.glob("wheelhouse-*"):
                shutil.rmtree(stale)
            build = [str(DEPLOY / "build-wheelhouse.sh"), "--python", sys.executable]
            result = run([*build, "--out", str(target)], 900)
            assert result.returncode == 0, result.stderr
    return target


def run(command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


@functools.cache
def plant_python() -> str:
    """The system's python3 where it has this interpreter's minor version, as on a plant
    PC (an interpreter under /root would be hidden from the service); else this one."""
    probe = "import ensurepip, sys; print(sys.version_info[:2])"
    system = Path("/usr/bin/python3")
    if system.exists() and run([str(system), "-c", probe], 60).stdout.strip() == str(
        sys.version_info[:2]
    ):
        return str(system)
    return sys.executable


@functools.cache
def offline() -> tuple[str, ...]:
    """A command prefix that runs without any network (a fresh network namespace) where
    this machine allows it; pip's --no-index keeps the install offline either way."""
    if shutil.which("unshare") and run(["unshare", "--net", "true"], 30).returncode == 0:
        return ("unshare", "--net")
    return ()


@dataclass
class Tree:
    """An install under a temporary root, as the scripts lay it out."""

    root: Path

    @property
    def prefix(self) -> Path:
        return self.root / "opt" / "edge-agent"

    @property
    def etc(self) -> Path:
        return self.root / "etc" / "edge-agent"

    @property
    def unit(self) -> Path:
        return self.root / "etc" / "systemd" / "system" / "edge-agent.service"

    @property
    def edge_agent(self) -> str:
        return str(self.prefix / "bin" / "edge-agent")

    def install(self, wheelhouse: Path) -> subprocess.CompletedProcess[str]:
        script = str(wheelhouse / "install-offline.sh")
        command = [*offline(), script, "--root", str(self.root), "--python", plant_python()]
        return run([*command, str(wheelhouse)], 600)

    def rollback(self) -> subprocess.CompletedProcess[str]:
        """As the README says: the installed version's own copy of the script."""
        script = str(self.prefix / "bin" / "install-offline.sh")
        return run([script, "--rollback", "--root", str(self.root)], 120)

    def current(self) -> str:
        return os.readlink(self.prefix / "current")


@pytest.fixture(scope="module")
def tree(wheelhouse: Path) -> Iterator[Tree]:
    # readable by every user: the agent runs as nobody below, as under DynamicUser
    root = Path(tempfile.mkdtemp(prefix="edge-agent-install-"))
    root.chmod(0o755)
    try:
        installed = Tree(root)
        result = installed.install(wheelhouse)
        assert result.returncode == 0, result.stdout + result.stderr
        yield installed
    finally:
        shutil.rmtree(root)


def test_help_of_both_scripts() -> None:
    for script in ("build-wheelhouse.sh", "install-offline.sh"):
        result = run([str(DEPLOY / script), "--help"], 30)
        assert result.returncode == 0
        assert result.stdout.startswith("Usage:"), script
    assert run([str(DEPLOY / "install-offline.sh"), "--bogus"], 30).returncode != 0


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_scripts_are_shellcheck_clean() -> None:
    result = run(["shellcheck", *map(str, DEPLOY.glob("*.sh"))], 60)
    assert result.returncode == 0, result.stdout


def test_the_wheelhouse_holds_what_an_offline_install_needs(wheelhouse: Path) -> None:
    names = {path.name for path in wheelhouse.iterdir()}
    expected = {"install-offline.sh", "agent.toml", "edge-agent.service", "BUILD-INFO"}
    assert names >= {*expected, "SHA256SUMS", "wheels"}
    wheels = {path.name.split("-")[0].lower() for path in (wheelhouse / "wheels").glob("*.whl")}
    assert {"edge_agent", "pyarrow", "numpy", "pymodbus", "asyncua", "pyserial"} <= wheels
    assert (wheelhouse / "agent.toml").read_bytes() == (DEPLOY / "agent.toml").read_bytes()
    assert os.access(wheelhouse / "install-offline.sh", os.X_OK)


def test_install_lays_out_venv_config_and_unit(tree: Tree, wheelhouse: Path) -> None:
    assert tree.current().startswith(f"venvs/{agent.__version__}-")
    assert os.readlink(tree.prefix / "bin") == "current/bin"
    version = run([tree.edge_agent, "--version"], 60)
    assert version.stdout.strip() == f"edge-agent {agent.__version__}"
    # the venv is the plant's interpreter's, not this test run's
    config = (tree.prefix / "current" / "pyvenv.cfg").read_text()
    assert f"home = {Path(plant_python()).parent}" in config
    template = (wheelhouse / "agent.toml").read_bytes()
    assert (tree.etc / "agent.toml.example").read_bytes() == template
    assert (tree.etc / "agent.toml").is_file()  # the template, until the plant edits it
    assert (tree.etc / "credentials").stat().st_mode & 0o777 == 0o700
    unit = tree.unit.read_text()
    assert f"ExecStart={tree.prefix}/bin/edge-agent run -c {tree.etc}/agent.toml" in unit
    assert "/opt/edge-agent" not in unit.replace(str(tree.prefix), "")
    override = tree.unit.with_name("edge-agent.service.d") / "override.conf"
    assert "[Service]" in override.read_text()


@dataclass
class AgentRun:
    returncode: int
    stderr: str
    store: Path
    syscalls: str | None  # strace's summary, where strace is installed


@pytest.fixture(scope="module")
def agent_run(tree: Tree) -> AgentRun:
    """The installed tree alone: its simulator, its agent (as nobody where the tests run
    as root, as under DynamicUser), its config template edited as the README says; stopped
    with SIGTERM once the first batch has landed."""
    state = tree.root / "var" / "lib" / "edge-agent"
    state.mkdir(parents=True, exist_ok=True)
    user = unprivileged()
    if user:
        os.chown(state, *user)
    simulator = subprocess.Popen(
        [tree.edge_agent, "simulate", "modbus", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert simulator.stdout is not None
        port = re.search(r"listening on 127\.0\.0\.1:(\d+)", simulator.stdout.readline())
        assert port, "the simulator says where it listens"
        config = edit_config(tree, int(port.group(1)))
        syscalls = state / "syscalls.txt"  # strace writes it as the agent's user
        agent = start_agent(tree, config, syscalls, user)
        try:
            store = state / "edge-data"
            deadline = time.monotonic() + 60
            while not list(store.rglob("*.parquet")) and agent.poll() is None:
                assert time.monotonic() < deadline, "no batch landed within 60 s"
                time.sleep(0.2)
        finally:
            stop(agent)
        _, stderr = agent.communicate(timeout=60)
    finally:
        simulator.send_signal(signal.SIGTERM)
        simulator.wait(timeout=30)
    summary = syscalls.read_text() if syscalls.exists() else None
    return AgentRun(agent.returncode, stderr, store, summary)


def test_installed_agent_collects_from_the_installed_simulator(agent_run: AgentRun) -> None:
    assert agent_run.returncode == 0, agent_run.stderr[-2000:]
    assert "agent stopped" in agent_run.stderr
    table = read_store(agent_run.store)
    tags = set(pc.unique(table["tag"].cast("string")).to_pylist())
    assert tags == {"spindle_speed", "spindle_temp"}
    assert pc.all(pc.equal(table["source"].cast("string"), "plc1")).as_py()


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_the_unit_allows_every_system_call_the_agent_made(agent_run: AgentRun, tree: Tree) -> None:
    """SystemCallFilter= as the rendered unit has it, against the calls of the run above
    (no systemd runs here to apply the filter itself)."""
    assert agent_run.syscalls is not None
    used = {
        match.group(1)
        for match in re.finditer(r"(?m)^\s*\d+\.\d+\s.*\s([a-z_0-9]+)$", agent_run.syscalls)
    } - {"total"}
    assert {"openat", "connect", "fdatasync"} <= used, "the summary was read"
    allowed = unit_syscall_filter(tree.unit.read_text())
    refused = used - allowed - DENIED_AND_HARMLESS.keys()
    assert not refused, f"the unit's SystemCallFilter refuses what the agent uses: {refused}"


def unprivileged() -> tuple[int, int] | None:
    """(uid, gid) of nobody, when root can drop to it with setpriv."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return None
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        return None
    return nobody.pw_uid, nobody.pw_gid


def edit_config(tree: Tree, port: int) -> Path:
    """The installed template pointed at the simulator and at folders under the root."""
    text = (tree.etc / "agent.toml").read_text()
    text = text.replace("127.0.0.1:5020", f"127.0.0.1:{port}")
    text = text.replace('"/var/lib/edge-agent', f'"{tree.root}/var/lib/edge-agent')
    text = text.replace('#metrics = "127.0.0.1:9464"', 'metrics = ""')
    config = tree.etc / "agent.toml"
    config.write_text(text)
    return config


def start_agent(
    tree: Tree, config: Path, syscalls: Path, user: tuple[int, int] | None
) -> subprocess.Popen[str]:
    """``edge-agent run``, under strace where it is installed to list its system calls."""
    command = [tree.edge_agent, "run", "-c", str(config)]
    if shutil.which("strace"):
        command = ["strace", "-f", "-qq", "-c", "-o", str(syscalls), *command]
    if user:
        uid, gid = user
        command = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *command]
    return subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)


def stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM to the agent itself: under strace that is strace's child."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    with contextlib.suppress(OSError):  # ended already: its status tells why
        pids = [int(pid) for pid in children.read_text().split()]
        os.kill(pids[0] if pids else process.pid, signal.SIGTERM)


# Calls the unit's filter refuses (EPERM) that a run makes anyway, and why that is fine.
DENIED_AND_HARMLESS = {
    "mbind": "OpenBLAS (numpy) asks for NUMA placement of its buffers and ignores the result",
    "fchown": "SQLite gives its WAL the database's owner when running as root only",
}


def unit_syscall_filter(unit: str) -> set[str]:
    """The system calls the unit's SystemCallFilter= lines allow, groups expanded by
    systemd-analyze."""
    groups: dict[str, list[str]] = {}
    listing = run(["systemd-analyze", "syscall-filter"], 60).stdout
    for block in listing.split("\n\n"):
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        if lines and lines[0].startswith("@"):
            groups[lines[0]] = [line for line in lines[1:] if not line.startswith("#")]

    def expand(name: str) -> set[str]:
        if not name.startswith("@"):
            return {name}
        return set().union(*(expand(member) for member in groups[name]))

    allowed: set[str] = set()
    for value in re.findall(r"(?m)^SystemCallFilter=(.*)$", unit):
        if value.startswith("~"):
            allowed -= set().union(*(expand(name) for name in value[1:].split()))
        else:
            allowed |= set().union(*(expand(name) for name in value.split()))
    return allowed


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    return tool


def test_the_rendered_unit_passes_systemd_analyze_verify(tree: Tree) -> None:
    """Offline: needs no running systemd; it checks the syntax and that ExecStart's
    program exists, which is why the unit is rendered for the root it was installed to."""
    result = run([systemd_analyze(), "verify", str(tree.unit)], 120)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def exposure(unit: str) -> float:
    """``systemd-analyze security``'s overall figure for a unit file (offline)."""
    result = run([systemd_analyze(), "security", "--offline=true", unit], 120)
    level = re.search(r"Overall exposure level for edge-agent\.service: (\d+\.\d+)", result.stdout)
    assert level, result.stdout + result.stderr
    return float(level.group(1))


def test_the_rendered_unit_exposure_is_below_3(tree: Tree) -> None:
    assert exposure(str(tree.unit)) < 3.0


def test_the_drop_in_examples_switched_on_still_verify(tree: Tree, tmp_path: Path) -> None:
    """The lines the plant uncomments in override.conf (addresses, folders, a group,
    credentials) are valid directives and keep the exposure below 3.0."""
    units = tmp_path / "system"
    shutil.copytree(tree.unit.parent, units)
    override = units / "edge-agent.service.d" / "override.conf"
    examples = re.sub(r"(?m)^#(?=[A-Z][A-Za-z]+=)", "", override.read_text())
    assert examples.count("\nIPAddressAllow=") == examples.count("\nLoadCredential=") == 1
    override.write_text(examples)
    unit = str(units / "edge-agent.service")
    verify = run([systemd_analyze(), "verify", unit], 120)
    assert verify.returncode == 0
    assert verify.stderr.strip() == "", verify.stderr
    assert exposure(unit) < 3.0


def test_a_second_install_changes_nothing_and_keeps_the_config(
    tree: Tree, wheelhouse: Path
) -> None:
    config = tree.etc / "agent.toml"
    config.write_text(config.read_text() + "# edited by the plant\n")
    before = tree.current(), tree.unit.read_text()
    result = tree.install(wheelhouse)
    assert result.returncode == 0, result.stderr
    assert "is installed already" in result.stdout
    assert "wrote" not in result.stdout
    assert config.read_text().endswith("# edited by the plant\n")
    assert (tree.current(), tree.unit.read_text()) == before


def test_a_changed_wheelhouse_is_refused(tree: Tree, wheelhouse: Path, tmp_path: Path) -> None:
    copy = tmp_path / "wheelhouse"
    shutil.copytree(wheelhouse, copy, copy_function=os.link)
    (copy / "agent.toml").unlink()  # a new file: the cache's linked one stays intact
    (copy / "agent.toml").write_text('[agent]\ndata_dir = "/tmp/elsewhere"\n')
    result = tree.install(copy)
    assert result.returncode == 1
    assert "does not match its SHA256SUMS" in result.stderr


def newer_wheelhouse(wheelhouse: Path, folder: Path) -> Path:
    """The wheelhouse with one more file among its wheels and its checksums redone: to
    the installer another build (a release), without building twice."""
    shutil.copytree(wheelhouse, folder, copy_function=os.link)
    (folder / "wheels" / "RELEASE-NOTE").write_text("the next release\n")
    (folder / "SHA256SUMS").unlink()
    files = sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())
    sums = [f"{hashlib.sha256((folder / name).read_bytes()).hexdigest()}  {name}" for name in files]
    (folder / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return folder


def test_upgrade_checks_the_config_first_and_rollback_switches_back(
    tree: Tree, wheelhouse: Path, tmp_path: Path
) -> None:
    newer = newer_wheelhouse(wheelhouse, tmp_path / "newer")
    config = tree.etc / "agent.toml"
    good = config.read_text()
    old = tree.current()

    config.write_text(good.replace('protocol = "modbus"', 'protocol = "modbus"\nbaud = 9600', 1))
    refused = tree.install(newer)
    assert refused.returncode == 1
    assert "nothing was switched" in refused.stderr
    assert "sources[0].baud: unknown key" in refused.stderr
    assert tree.current() == old

    config.write_text(good)
    upgraded = tree.install(newer)
    assert upgraded.returncode == 0, upgraded.stderr
    new = tree.current()
    assert new != old
    assert os.readlink(tree.prefix / "previous") == old
    assert run([tree.edge_agent, "--version"], 60).returncode == 0

    back = tree.rollback()
    assert back.returncode == 0, back.stderr
    assert (tree.current(), os.readlink(tree.prefix / "previous")) == (old, new)
    assert run([tree.edge_agent, "--version"], 60).returncode == 0
    forth = tree.rollback()
    assert forth.returncode == 0, forth.stderr
    assert tree.current() == new
    assert sorted(path.name for path in (tree.prefix / "venvs").iterdir()) == sorted(
        [Path(old).name, Path(new).name]
    )
