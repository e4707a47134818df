"""Uplink and collector config: the agent file takes the new uplink types, ``check`` shows
them without secrets, and ``collect`` refuses a bad file with one line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.commands.cli import EXIT_CONFIG, main

AGENT = """\
[agent]
gateway_id = "gw1"
metrics = ""

[[uplinks]]
type = "mqtt"
url = "mqtts://broker.plant:8883"
ca_file = "/etc/edge/ca.pem"
topic_prefix = "plant-a"

[[uplinks]]
type = "postgres"
dsn = "postgresql://edge@db:5432/plant"
username = "edge"
password_env = "PGPASSWORD"
db_schema = "line1"

[[uplinks]]
type = "parquet"
name = "lake"
path = "s3://lake/plant-a"
endpoint = "http://minio:9000"
access_key_env = "S3_KEY"
secret_key_file = "/run/secrets/s3"

[[sources]]
name = "plc"
protocol = "modbus"
url = "modbus+tcp://127.0.0.1:5020"
  [[sources.tags]]
  name = "speed"
  address = "hr:0"
"""


def test_check_lists_every_uplink_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(AGENT)
    assert main(["check", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "uplink mqtt (mqtt) -> mqtts://broker.plant:8883 plant-a/<gateway>/batches" in out
    assert "uplink postgres (postgres) -> postgresql://edge@db:5432/plant schema line1" in out
    assert "uplink lake (parquet) -> s3://lake/plant-a" in out


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (('url = "mqtts://broker.plant:8883"', 'url = "http://x"'), "uplinks[0].url: expected"),
        (('topic_prefix = "plant-a"', 'topic_prefix = "a/#"'), "uplinks[0].topic_prefix: a"),
        (('db_schema = "line1"', 'db_schema = "x; drop"'), "uplinks[1].db_schema: String should"),
        (('access_key_env = "S3_KEY"\n', ""), "uplinks[2]: an access key needs its secret key"),
        (('path = "s3://lake/plant-a"', 'path = "./data"'), "uplinks[2]: endpoint, region"),
        (("edge@db", "edge:hunter2@db"), "uplinks[1].dsn: credentials in the url are refused"),
    ],
)
def test_bad_uplink_keys_name_the_key(
    change: tuple[str, str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "agent.toml"
    assert change[0] in AGENT
    path.write_text(AGENT.replace(*change))
    assert main(["check", "-c", str(path)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert f"{path}: {expected}" in err
    assert "hunter2" not in err


def test_collect_refuses_a_bad_config_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "collect.toml"
    path.write_text('[broker]\nurl = "mqtt://127.0.0.1:1"\n[store]\ntype = "mqtt"\n')
    assert main(["collect", "-c", str(path)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert f'{path}: store: expected type = "parquet" or "postgres" (got \'mqtt\')' in err
    assert main(["collect", "-c", str(tmp_path / "missing.toml")]) == EXIT_CONFIG
    assert "missing.toml: file not found" in capsys.readouterr().err
