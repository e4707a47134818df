"""Finding drivers: every installed package's ``edge_agent.protocols`` entry points."""

from __future__ import annotations

from importlib.metadata import entry_points

from protocols.sdk import Driver

GROUP = "edge_agent.protocols"


class DriverNotFound(LookupError):
    """No installed driver has that protocol name; the message lists the installed ones."""


def installed_protocols() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=GROUP)})


def load_driver(protocol: str) -> type[Driver]:
    """The driver class registered for ``protocol``; raises DriverNotFound."""
    matches = [ep for ep in entry_points(group=GROUP) if ep.name == protocol]
    if not matches:
        installed = ", ".join(installed_protocols()) or "none"
        raise DriverNotFound(f"unknown protocol {protocol!r}; installed drivers: {installed}")
    driver = matches[0].load()
    if not (isinstance(driver, type) and issubclass(driver, Driver)):
        raise DriverNotFound(
            f"entry point {protocol!r} ({matches[0].value}) is not a protocols.sdk.Driver"
        )
    return driver
