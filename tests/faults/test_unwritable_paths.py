"""Folders the agent cannot write: ``check``, ``run`` and ``collect`` refuse to start with
one line naming the key and exit status 2, as an unprivileged user too, never a traceback;
a file the system refuses once ``run`` has begun is one log line and status 74.

Real folders throughout: a path below a regular file, a read-only folder (as ``nobody``
when the tests run as root, since root writes through any mode) and a read-only tmpfs
mount (root only). The commands run as real processes, as systemd starts them.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import agent
from agent.commands.cli import EXIT_CONFIG, EXIT_IO
from agent.config.load import load_config
from agent.config.paths import agent_dirs, local_dir, write_problem

REPO = Path(agent.__file__).resolve().parent.parent
IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="mounting a filesystem needs root")


def _nobody() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        return None


NOBODY = _nobody()


@pytest.fixture
def shared() -> Iterator[Path]:
    """A folder every user can read: pytest's tmp_path is private to the user running the
    tests, and the commands here may run as ``nobody``."""
    directory = Path(tempfile.mkdtemp(prefix="edge-agent-paths-"))
    directory.chmod(0o755)
    yield directory
    for folder, _, _ in os.walk(directory):
        os.chmod(folder, 0o755)  # a read-only folder of a test, when not root
    shutil.rmtree(directory)


@pytest.fixture
def mount(shared: Path) -> Iterator[Callable[[str], Path]]:
    """``mount("ro,size=1m")``: a fresh tmpfs with those options, unmounted afterwards."""
    points: list[Path] = []

    def make(options: str) -> Path:
        point = shared / f"mnt{len(points)}"
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], check=True)
        points.append(point)
        return point

    yield make
    for point in points:
        subprocess.run(["umount", str(point)], check=True)


@functools.cache
def _unprivileged() -> list[str]:
    """The command prefix that drops root to nobody without capabilities (as
    ``DynamicUser=yes`` would), or [] when the tests already run as an ordinary user.

    ``setpriv`` drops the capabilities only at the exec, so it can start an interpreter
    that lives where nobody may not look (a pyenv under /root); the agent then runs
    without them. Skips when nobody cannot import this checkout at all."""
    if not IS_ROOT:
        return []
    if NOBODY is None or shutil.which("setpriv") is None:
        pytest.skip("running as root, and no user nobody or no setpriv to drop to it")
    prefix = ["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups"]
    problem = _cannot_import(prefix, _unprivileged_code())
    if problem:
        pytest.skip(f"nobody cannot run this checkout: {problem}")
    return prefix


def _cannot_import(prefix: list[str], pythonpath: Path) -> str:
    probe = subprocess.run(
        [*prefix, sys.executable, "-c", "import os, agent.config.paths; print(os.geteuid())"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd="/",
        env={**os.environ, "PYTHONPATH": str(pythonpath)},
    )
    return "" if probe.stdout.strip() == str(NOBODY and NOBODY.pw_uid) else probe.stderr[-200:]


@functools.cache
def _unprivileged_code() -> Path:
    """This checkout's packages where nobody can read them: the checkout itself, or a
    copy when it lies in a folder private to root (a CI clone under /root)."""
    copy = Path(tempfile.mkdtemp(prefix="edge-agent-code-"))
    atexit.register(shutil.rmtree, copy, True)
    copy.chmod(0o755)
    for package in ("agent", "protocols", "simulators"):
        shutil.copytree(REPO / package, copy / package)
    for folder, _, _ in os.walk(copy):
        os.chmod(folder, 0o755)
    return copy


def _give_to_unprivileged(path: Path) -> None:
    """Own ``path`` as the user the command runs as, so only its mode decides."""
    if IS_ROOT and NOBODY is not None:
        os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)


def edge_agent(
    command: str, config: Path, *, unprivileged: bool = False
) -> subprocess.CompletedProcess[str]:
    """``edge-agent <command> -c config`` as its own process, this checkout's code."""
    return subprocess.run(
        [
            *(_unprivileged() if unprivileged else []),
            sys.executable,
            "-m",
            "agent.commands.cli",
            command,
            "-c",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=config.parent,
        env={**os.environ, "PYTHONPATH": str(_unprivileged_code() if unprivileged else REPO)},
    )


# --- the faults ---------------------------------------------------------------------------
# Each makes a folder the agent cannot use in ``shared`` and returns it, the words the
# message must hold, and whether to run the command unprivileged.

Fault = Callable[[Path, Callable[[str], Path]], tuple[Path, str, bool]]


def _below_a_file(shared: Path, mount: Callable[[str], Path]) -> tuple[Path, str, bool]:
    (shared / "plain").write_text("not a folder\n")
    return shared / "plain" / "state", f"{shared / 'plain'} is not a directory", False


def _in_a_read_only_folder(shared: Path, mount: Callable[[str], Path]) -> tuple[Path, str, bool]:
    folder = shared / "locked"
    folder.mkdir(mode=0o555)
    _give_to_unprivileged(folder)
    return folder / "state", f"cannot create {folder / 'state'}: Permission denied", True


def _a_read_only_folder(shared: Path, mount: Callable[[str], Path]) -> tuple[Path, str, bool]:
    folder = shared / "locked"
    folder.mkdir(mode=0o555)
    _give_to_unprivileged(folder)
    return folder, f"cannot write {folder}: Permission denied", True


def _a_read_only_mount(shared: Path, mount: Callable[[str], Path]) -> tuple[Path, str, bool]:
    point = mount("ro,size=1m")
    return point, f"cannot write {point}: Read-only file system", False


FAULTS: dict[str, Fault] = {
    "below_a_file": _below_a_file,
    "in_a_read_only_folder": _in_a_read_only_folder,
    "a_read_only_folder": _a_read_only_folder,
    "a_read_only_mount": _a_read_only_mount,
}
FAULT_PARAMS = [
    pytest.param(name, marks=needs_root) if name == "a_read_only_mount" else name for name in FAULTS
]


def _usable(shared: Path, name: str) -> Path:
    """A folder that works, for the keys a test does not break."""
    folder = shared / name
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)  # whatever the umask
    return folder


def _agent_toml(shared: Path, data_dir: Path, store: Path, wide: Path | None = None) -> Path:
    resample = f'[resample]\nperiod = "500ms"\npath = "{wide}"\n' if wide else ""
    config = shared / "agent.toml"
    config.write_text(
        f'[agent]\ngateway_id = "gw-paths"\nmetrics = ""\ndata_dir = "{data_dir}"\n'
        f'[batch]\nwindow = "1s"\nlateness = "300ms"\n{resample}'
        f'[[uplinks]]\ntype = "mqtt"\nurl = "mqtt://127.0.0.1:1"\n'
        f'[[uplinks]]\ntype = "parquet"\npath = "{store}"\n'
        '[[sources]]\nname = "wave1"\nprotocol = "template"\n'
        '  [[sources.tags]]\n  name = "wave"\n  rate = "500ms"\n'
    )
    config.chmod(0o644)
    return config


def _assert_one_line(result: subprocess.CompletedProcess[str], config: Path, key: str) -> str:
    assert "Traceback" not in result.stderr
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{config}: {key}: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize("fault", FAULT_PARAMS)
def test_unusable_data_dir_is_one_line_and_exit_2(
    fault: str, command: str, shared: Path, mount: Callable[[str], Path]
) -> None:
    data_dir, words, unprivileged = FAULTS[fault](shared, mount)
    config = _agent_toml(shared, data_dir, _usable(shared, "store"))
    result = edge_agent(command, config, unprivileged=unprivileged)
    line = _assert_one_line(result, config, "agent.data_dir")
    assert line.endswith(words), line


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize("fault", FAULT_PARAMS)
def test_unusable_parquet_uplink_path_is_one_line_and_exit_2(
    fault: str, command: str, shared: Path, mount: Callable[[str], Path]
) -> None:
    store, words, unprivileged = FAULTS[fault](shared, mount)
    config = _agent_toml(shared, _usable(shared, "state"), store)
    result = edge_agent(command, config, unprivileged=unprivileged)
    # uplinks[0] is the mqtt uplink: the key is the parquet one's own index
    line = _assert_one_line(result, config, "uplinks[1].path")
    assert line.endswith(words), line


@pytest.mark.parametrize("command", ["check", "run"])
def test_unusable_resample_path_is_one_line_and_exit_2(
    command: str, shared: Path, mount: Callable[[str], Path]
) -> None:
    wide, words, unprivileged = _in_a_read_only_folder(shared, mount)
    config = _agent_toml(shared, _usable(shared, "state"), _usable(shared, "store"), wide)
    result = edge_agent(command, config, unprivileged=unprivileged)
    line = _assert_one_line(result, config, "resample.path")
    assert line.endswith(words), line


def test_every_unusable_folder_is_its_own_line(shared: Path) -> None:
    (shared / "plain").write_text("not a folder\n")
    config = _agent_toml(shared, shared / "plain" / "state", shared / "plain" / "store")
    result = edge_agent("check", config)
    assert result.returncode == EXIT_CONFIG
    assert result.stderr.splitlines() == [
        f"{config}: agent.data_dir: cannot create {shared}/plain/state: "
        f"{shared}/plain is not a directory",
        f"{config}: uplinks[1].path: cannot create {shared}/plain/store: "
        f"{shared}/plain is not a directory",
    ]


@pytest.mark.parametrize("fault", FAULT_PARAMS)
def test_unusable_collector_store_is_one_line_and_exit_2(
    fault: str, shared: Path, mount: Callable[[str], Path]
) -> None:
    store, words, unprivileged = FAULTS[fault](shared, mount)
    config = shared / "collect.toml"
    config.write_text(
        f'[broker]\nurl = "mqtt://127.0.0.1:1"\n[store]\ntype = "parquet"\npath = "{store}"\n'
    )
    config.chmod(0o644)
    result = edge_agent("collect", config, unprivileged=unprivileged)
    line = _assert_one_line(result, config, "store.path")
    assert line.endswith(words), line


def test_check_passes_as_the_unprivileged_user_and_leaves_no_folder(shared: Path) -> None:
    """The control of the read-only cases: the same user, a folder it may write."""
    owned = shared / "owned"
    owned.mkdir()
    _give_to_unprivileged(owned)
    config = _agent_toml(shared, owned / "a" / "state", owned / "b" / "store", owned / "c")
    result = edge_agent("check", config, unprivileged=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{config}: OK")
    assert list(owned.iterdir()) == []  # check made a/state, b/store, c and removed them


@needs_root
def test_check_passes_on_a_full_filesystem(shared: Path, mount: Callable[[str], Path]) -> None:
    """A full disk is a fault the running agent rides out, not a mistake in the config."""
    point = mount("size=64k,nr_inodes=2")  # the root folder and one file
    (point / "filler").touch()
    with pytest.raises(OSError, match="No space left"):
        (point / "one-more").touch()
    config = _agent_toml(shared, point, _usable(shared, "store"))
    assert write_problem(point) is None
    result = edge_agent("check", config)
    assert result.returncode == 0, result.stderr


def test_a_file_refused_after_the_check_is_one_log_line_and_exit_74(shared: Path) -> None:
    """The data_dir passes the check, but the spool's frame folder is a regular file."""
    state = _usable(shared, "state")
    (state / "spool.frames").write_text("in the way\n")
    config = _agent_toml(shared, state, _usable(shared, "store"))
    result = edge_agent("run", config)
    assert "Traceback" not in result.stderr
    assert result.returncode == EXIT_IO == 74
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    event = json.loads(lines[0])  # stderr is not a terminal: structlog's JSON line
    assert event["level"] == "error"
    assert event["event"] == "stopped by an operating-system error"
    assert event["command"] == "run"
    assert "spool.frames" in event["error"]
    assert event["at"].startswith("agent/")


# --- the probe itself ---------------------------------------------------------------------


def test_probe_creates_what_run_needs_and_check_removes_it(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "c"
    assert write_problem(deep, keep=False) is None
    assert list(tmp_path.iterdir()) == []
    assert write_problem(deep) is None
    assert deep.is_dir()
    assert list(deep.iterdir()) == []  # the probe's file is gone


def test_probe_keeps_a_folder_that_was_there(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    assert write_problem(tmp_path / "a" / "b", keep=False) is None
    assert [p.name for p in tmp_path.iterdir()] == ["a"]
    assert list((tmp_path / "a").iterdir()) == []


def test_probe_names_a_file_where_a_folder_should_be(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("")
    assert write_problem(tmp_path / "data", keep=False) == (
        f"cannot create {tmp_path}/data: {tmp_path}/data is not a directory"
    )
    assert (tmp_path / "data").is_file()


def test_local_dir_of_parquet_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert local_dir("s3://bucket/prefix") is None
    assert local_dir("file:///srv/lake%20one") == Path("/srv/lake one")
    assert local_dir("lake") == tmp_path.resolve() / "lake"
    assert local_dir("~/lake") == Path.home() / "lake"


def test_agent_dirs_names_every_local_folder_by_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "agent.toml"
    config.write_text(
        '[agent]\ndata_dir = "state"\n'
        '[resample]\nperiod = "1s"\npath = "wide"\n'
        '[[uplinks]]\ntype = "parquet"\nname = "cloud"\npath = "s3://bucket/x"\n'
        '[[uplinks]]\ntype = "parquet"\nname = "lake"\npath = "lake"\n'
        '[[sources]]\nname = "w"\nprotocol = "template"\n[[sources.tags]]\nname = "t"\n'
    )
    here = tmp_path.resolve()
    assert agent_dirs(load_config(config).config) == [
        ("agent.data_dir", here / "state"),
        ("uplinks[1].path", here / "lake"),
        ("resample.path", here / "wide"),
    ]
