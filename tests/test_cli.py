"""The CLI explains itself: help for every command and option, -V, exit codes, a closed
pipe, browse's URL checks and its whole-config output."""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from agent import __version__
from agent.commands.cli import EXIT_BROKEN_PIPE, EXIT_CONFIG, _parser, main
from simulators.opcua_cnc import NODES, OpcUaCncSimulator

CLI = [sys.executable, "-m", "agent.commands.cli"]


def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                assert helps.get(name), f"{sub.prog}: no one-line summary in the command list"
                found.append((sub.prog, sub))
                found += _subparsers(sub)
    return found


def test_every_command_has_a_description_and_every_option_a_help() -> None:
    commands = _subparsers(_parser())
    names = {prog for prog, _ in commands}
    assert {"edge-agent run", "edge-agent check", "edge-agent simulate modbus"} <= names
    missing = []
    for prog, sub in commands:
        if not sub.description:
            missing.append(f"{prog}: no description")
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            if not action.help:
                missing.append(f"{prog} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_help_lists_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--help"])
    assert stopped.value.code == 0
    out = capsys.readouterr().out
    for code in ("0 ", "1 ", "2 ", "74 ", "141 "):
        assert f"\n  {code}" in out, code


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version_flag(flag: str) -> None:
    done = subprocess.run([*CLI, flag], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout.strip() == f"edge-agent {__version__}"


def test_a_reader_that_went_away_ends_the_command_quietly(tmp_path: Path) -> None:
    config = tmp_path / "a.toml"
    config.write_text(
        '[agent]\nmetrics = ""\n[[sources]]\nname = "w"\nprotocol = "template"\n'
        + "".join(f'[[sources.tags]]\nname = "t{i}"\n' for i in range(50))
    )
    # the read end closes before the child has printed anything: every write meets EPIPE
    child = subprocess.Popen(
        [*CLI, "check", "-c", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert child.stdout is not None
    assert child.stderr is not None
    child.stdout.close()
    stderr = child.stderr.read().decode()
    assert child.wait(timeout=60) == EXIT_BROKEN_PIPE
    assert stderr == ""


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("127.0.0.1:4840", 'did you mean "opc.tcp://127.0.0.1:4840"'),
        ("http://127.0.0.1:4840", "not a http:// url"),
        ("opc.tcp://op:SECRET@127.0.0.1:4840", "credentials in the url are refused"),
    ],
)
def test_browse_refuses_a_url_it_cannot_use(
    url: str, fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["browse", url]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.startswith("browse: url: "), err
    assert fragment in err
    assert "SECRET" not in err
    assert "Traceback" not in err


def test_browse_of_a_server_that_is_not_there_is_one_line() -> None:
    # a port that was free a moment ago: nothing listens
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = subprocess.run(
        [*CLI, "browse", f"opc.tcp://127.0.0.1:{port}"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert "cannot browse" in done.stderr
    assert "Traceback" not in done.stderr


async def test_browse_config_is_a_whole_config_that_check_accepts(tmp_path: Path) -> None:
    simulator = OpcUaCncSimulator(seed=1)
    await simulator.start("127.0.0.1", 0)
    try:
        browse = await asyncio.create_subprocess_exec(
            *CLI, "browse", simulator.url, "--config", "--name", "cnc9",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(browse.communicate(), 60)
    finally:
        await simulator.stop()
    assert browse.returncode == 0, err.decode()
    config = tmp_path / "browsed.toml"
    config.write_text(out.decode())
    check = await asyncio.create_subprocess_exec(
        *CLI, "check", "-c", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    summary, problems = await asyncio.wait_for(check.communicate(), 60)
    assert check.returncode == 0, problems.decode()
    assert "cnc9 (opcua" in summary.decode()
    assert f"{len(NODES)} tags" in summary.decode()
