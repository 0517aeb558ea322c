"""The agent's config file: what it accepts, and that each mistake names file, key and reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import Address, load_config
from agent.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

GOOD = """
[agent]
listen = "127.0.0.1:7079"
metrics_listen = "[::1]:9568"
state_dir = "state"
refresh_interval = 2.5

[[nodes]]
name = "counter@localhost"
cookie_file = "counter.cookie"
epmd_port = 4370
"""


def write(tmp_path: Path, text: str, cookie: str | None = "s3cret\n") -> Path:
    if cookie is not None:
        (tmp_path / "counter.cookie").write_text(cookie)
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_a_good_config(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.listen == Address("127.0.0.1", 7079) and config.listen.is_loopback
    assert config.metrics_listen == Address("::1", 9568) and str(config.metrics_listen) == "[::1]:9568"
    # Relative paths are relative to the config file, not to the current directory.
    assert config.state_dir == tmp_path / "state"
    assert config.refresh_interval == 2.5
    [node] = config.nodes
    assert (node.name, node.epmd_port, node.cookie) == ("counter@localhost", 4370, "s3cret")
    assert "s3cret" not in repr(config)


def test_defaults_and_metrics_disabled(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[agent]\nmetrics_listen = ""\n'))
    assert config.listen == Address("127.0.0.1", 7079)
    assert config.metrics_listen is None
    assert config.state_dir == Path("/var/lib/relctl")
    assert config.nodes == ()


@pytest.mark.parametrize(("text", "key", "reason"), [
    ("[agent]\nlisten = 7079\n", "agent.listen", "must be a string, not int"),
    ("[agent]\nlisten = \"7079\"\n", "agent.listen", "is not HOST:PORT"),
    ("[agent]\nlisten = \"localhost:http\"\n", "agent.listen", "port 'http' is not a number"),
    ("[agent]\nlisten = \"localhost:70000\"\n", "agent.listen", "outside 1-65535"),
    ("[agent]\nlistn = \"localhost:7079\"\n", "agent.listn", "unknown key (known keys: "),
    ("[agent]\nrefresh_interval = 0\n", "agent.refresh_interval", "must be greater than 0"),
    ("[agent]\nrpc_timeout = true\n", "agent.rpc_timeout", "must be a number, not bool"),
    ("[agnet]\n", "agnet", "unknown table"),
    ("[[nodes]]\ncookie_file = \"counter.cookie\"\n", "nodes[0].name", "is required"),
    ("[[nodes]]\nname = \"counter\"\ncookie_file = \"counter.cookie\"\n", "nodes[0].name",
     "is not a node name like \"app@host\""),
    ("[[nodes]]\nname = \"a@h\"\ncookie_file = \"counter.cookie\"\nepmd_port = \"4369\"\n",
     "nodes[0].epmd_port", "must be an integer"),
    ("[[nodes]]\nname = \"a@h\"\ncookie_file = \"missing\"\n", "nodes[0].cookie_file",
     "does not exist"),
    ("[[nodes]]\nname = \"a@h\"\ncookie_file = \"counter.cookie\"\n"
     "[[nodes]]\nname = \"a@h\"\ncookie_file = \"counter.cookie\"\n", "nodes[1].name",
     "configured twice"),
])
def test_mistakes_name_file_key_and_reason(tmp_path: Path, text: str, key: str, reason: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key
    assert reason in info.value.reason
    assert str(info.value).startswith(f"{path}: {key}: ")


def test_cookie_file_problems(tmp_path: Path) -> None:
    text = "[[nodes]]\nname = \"a@h\"\ncookie_file = \"counter.cookie\"\n"
    with pytest.raises(ConfigError, match="is empty"):
        load_config(write(tmp_path, text, cookie="\n"))
    with pytest.raises(ConfigError, match="more than one word"):
        load_config(write(tmp_path, text, cookie="two words\n"))


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found; pass --config PATH"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[agent\n"))


def test_agent_exits_78_with_the_reason_on_a_bad_config(tmp_path: Path) -> None:
    path = write(tmp_path, "[agent]\nlisten = \"nowhere\"\n")
    proc = subprocess.run([sys.executable, "-m", "agent", "--config", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 78
    assert f"configuration error: {path}: agent.listen: 'nowhere' is not HOST:PORT" in proc.stderr
    assert "Traceback" not in proc.stderr
