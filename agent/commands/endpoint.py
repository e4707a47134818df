"""Finding and asking the running agent's local endpoint, for ``status`` and ``reload``.

The endpoint is ``agent.metrics`` of the agent's config (``host:port``), so the operator
names the config file they already know; ``--url`` reaches one elsewhere. An agent
listening on every address (``0.0.0.0``, ``::``) is asked on loopback: a reload is only
taken from there.
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config.load import load_config

EXIT_UNREACHABLE = 3  # as `systemctl status` for a unit that is not running
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class Unreachable(Exception):
    """No agent answers there (or the config turns the endpoint off)."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]


def add_endpoint_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "-c", "--config", type=Path, help="the running agent's TOML config (its agent.metrics)"
    )
    where.add_argument("--url", help="the agent's endpoint, e.g. http://127.0.0.1:9464")


def base_url(config: Path | None, url: str | None) -> str:
    """The endpoint's URL; raises ConfigError for a broken config, Unreachable when the
    config turns the endpoint off."""
    if url is not None:
        return url.rstrip("/")
    assert config is not None
    listen = load_config(config).config.agent.metrics
    if not listen:
        raise Unreachable(f'{config}: agent.metrics is "": the agent has no endpoint to ask')
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    host = _WILDCARDS.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def ask(url: str, method: str = "GET", timeout_s: float = 10.0) -> Answer:
    """One request; its JSON answer, whatever its status. Raises Unreachable."""
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return Answer(response.status, json.loads(response.read()))
    except urllib.error.HTTPError as exc:  # 4xx/5xx with a JSON body (a refused reload)
        try:
            return Answer(exc.code, json.loads(exc.read()))
        except ValueError:
            raise Unreachable(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Unreachable(f"no agent answers at {url}: {reason}") from None
