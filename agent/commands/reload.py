"""``edge-agent reload``: have the running agent read its config file again.

The file is validated here first, so a mistake is reported with its key path (exit 2)
before the agent is bothered; then ``POST /reload`` asks the agent, which validates it
again (it reads its own file), applies what changed and answers. Exit status: 0 applied
or nothing to change, 1 refused (a key only a restart can change; the agent runs on with
its config), 2 the config is invalid, 3 no agent answers. Without an endpoint
(``agent.metrics = ""``), ``systemctl reload edge-agent`` or ``kill -HUP <pid>`` does the
same, and the agent's log says what came of it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from agent.commands.endpoint import (
    EXIT_UNREACHABLE,
    Unreachable,
    add_endpoint_arguments,
    ask,
    base_url,
)
from agent.config.load import ConfigError, load_config

EXIT_REFUSED = 1
EXIT_INVALID = 2


def add_reload_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "reload",
        help="have the running agent re-read its config (as SIGHUP / systemctl reload)",
        description=(
            "Validate the config file, then have the running agent (at its agent.metrics "
            "endpoint, POST /reload) read its own config file again and restart only the "
            "sources and uplinks that changed. Exit status: 0 applied or nothing to change, "
            "1 refused (a key that only a restart can change; the agent runs on), 2 the "
            "config is invalid, 3 no agent answers (then: systemctl reload edge-agent, or "
            "kill -HUP <pid>, and read the agent's log)."
        ),
    )
    add_endpoint_arguments(parser)
    parser.set_defaults(main=main)


def main(args: argparse.Namespace) -> int:
    config: Path | None = args.config
    try:
        if config is not None:
            load_config(config)  # a broken file is reported here, with its key path
        url = base_url(config, args.url)
        answer = ask(f"{url}/reload", "POST", timeout_s=60.0)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    except Unreachable as exc:
        print(f"{exc}; `systemctl reload edge-agent` or `kill -HUP <pid>` also reloads",
              file=sys.stderr)  # fmt: skip
        return EXIT_UNREACHABLE
    result = answer.body
    runs_from = Path(result.get("config", ""))
    if config is not None and runs_from.resolve() != config.resolve():
        print(f"note: the agent runs from {runs_from} and read that file, not {config}")
    outcome = result.get("outcome")
    if outcome == "applied":
        changes = "; ".join(f"{k.replace('_', ' ')}: {', '.join(v)}" for k, v in
                            result.get("changes", {}).items())  # fmt: skip
        print(f"reloaded {runs_from} (config hash {result.get('config_hash')}): {changes}")
        return 0
    if outcome == "unchanged":
        print(f"{runs_from} is unchanged (config hash {result.get('config_hash')})")
        return 0
    print(f"reload refused, the agent runs on with its config: {result.get('message')}",
          file=sys.stderr)  # fmt: skip
    return EXIT_INVALID if outcome == "invalid" else EXIT_REFUSED
