"""deploy/agent.toml is what plant IT edits: it must be accepted as shipped, every example
in it must be valid, and it must name every key the config models accept, so a key added
to a model without a line in the template fails here rather than staying undocumented."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from agent.config.load import load_config, parse_config
from agent.config.model import AgentConfig
from protocols.registry import installed_protocols, load_driver

TEMPLATE = Path(__file__).parents[2] / "deploy" / "agent.toml"
# "#key = value" and "#[table]" are settings left out; "# text" is prose
SETTING = re.compile(r"^(\s*)#(?=[A-Za-z_\[])")
# a copy-and-edit start for driver authors, not something a plant configures
NOT_FOR_PLANTS = {"template"}
# fields a driver sets on the models it builds itself, refused in a file
DRIVER_ONLY = {"SparkplugTagConfig.auto_slot"}


def uncommented(text: str) -> str:
    """The template with every setting switched on."""
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        comment = line.lstrip()
        if comment.startswith("#") and not SETTING.match(line):
            assert comment == "#" or comment.startswith("# "), (
                f"agent.toml line {number}: prose comments start with '# ', "
                f"settings with '#' and the key: {line!r}"
            )
        lines.append(SETTING.sub(r"\1", line))
    return "\n".join(lines) + "\n"


def models_in(annotation: object) -> Iterator[type[BaseModel]]:
    """The config models a field's annotation holds (through list, Optional, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for argument in typing.get_args(annotation):
        yield from models_in(argument)


def owner(model: type[BaseModel], field: str) -> str:
    """``Class.field`` of the class that declares the field: a key shared by every source
    (or tag, or uplink) through a base class is documented once, where the base is."""
    for klass in model.__mro__:
        if field in vars(klass).get("__annotations__", {}):
            return f"{klass.__name__}.{field}"
    raise AssertionError(f"{model.__name__}.{field} is declared nowhere")


def every_key() -> set[str]:
    roots: list[type[BaseModel]] = [AgentConfig]
    roots += [
        load_driver(protocol).config_model
        for protocol in installed_protocols()
        if protocol not in NOT_FOR_PLANTS
    ]
    keys: set[str] = set()
    seen: set[type[BaseModel]] = set()
    while roots:
        model = roots.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            if model is AgentConfig and name == "sources":
                continue  # the drivers' models, above, not the base every driver overrides
            keys.add(owner(model, name))
            roots.extend(models_in(field.annotation))
    return keys


def keys_set(section: BaseModel) -> Iterator[str]:
    """The keys the file gave, as ``Class.field``, for a validated section and all below."""
    for name in section.model_fields_set:
        yield owner(type(section), name)
    for name in type(section).model_fields:
        value = getattr(section, name)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, BaseModel):
                yield from keys_set(item)


def test_the_template_as_shipped_is_a_valid_config() -> None:
    loaded = load_config(TEMPLATE)
    assert [source.name for source in loaded.config.sources] == ["plc1"]
    assert str(loaded.config.agent.data_dir) == "/var/lib/edge-agent"


@pytest.mark.skipif(os.geteuid() != 0, reason="data_dir /var/lib/edge-agent: root only")
def test_check_accepts_the_template_as_shipped() -> None:
    """What the unit's ExecStartPre runs; ``check`` probes /var/lib/edge-agent and removes
    the folders it created."""
    existed = Path("/var/lib/edge-agent").exists()
    result = subprocess.run(
        [sys.executable, "-m", "agent.commands.cli", "check", "-c", str(TEMPLATE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "plc1" in result.stdout
    assert Path("/var/lib/edge-agent").exists() == existed


def test_every_setting_in_the_template_is_valid() -> None:
    parse_config(tomllib.loads(uncommented(TEMPLATE.read_text())), TEMPLATE)


def test_the_template_names_every_config_key() -> None:
    config = parse_config(tomllib.loads(uncommented(TEMPLATE.read_text())), TEMPLATE).config
    missing = every_key() - DRIVER_ONLY - set(keys_set(config))
    assert not missing, f"keys without a line in deploy/agent.toml: {sorted(missing)}"


def test_the_key_check_sees_a_key_missing_from_the_template() -> None:
    """The check above would pass vacuously if keys_set credited keys the file lacks."""
    text = uncommented(TEMPLATE.read_text())
    without = re.sub(r"(?m)^\s*max_bits = .*\n", "", text)
    assert without != text
    config = parse_config(tomllib.loads(without), TEMPLATE).config
    assert every_key() - DRIVER_ONLY - set(keys_set(config)) == {"ModbusSourceConfig.max_bits"}
