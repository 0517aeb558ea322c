"""The agent's config file: what it accepts, and that each mistake names file, key and reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import Address, UnixAddress, load_config
from agent.errors import ConfigError
from bridge import Atom

ROOT = Path(__file__).resolve().parents[3]

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

[[tokens]]
name = "deploy-bot"
role = "operator"
file = "deploy.token"
"""
TOKEN = "0123456789abcdef0123"


def write(tmp_path: Path, text: str, cookie: str | None = "s3cret\n") -> Path:
    if cookie is not None:
        (tmp_path / "counter.cookie").write_text(cookie)
        (tmp_path / "counter.cookie").chmod(0o600)
    (tmp_path / "deploy.token").write_text(TOKEN + "\n")
    (tmp_path / "deploy.token").chmod(0o600)
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_a_good_config(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.listen == (Address("127.0.0.1", 7079),) and config.listen[0].is_loopback
    [token] = config.tokens
    assert (token.name, token.role, token.secret) == ("deploy-bot", "operator", TOKEN)
    assert TOKEN not in repr(config)
    assert config.metrics_listen == Address("::1", 9568) and str(config.metrics_listen) == "[::1]:9568"
    # Relative paths are relative to the config file, not to the current directory.
    assert config.state_dir == tmp_path / "state"
    assert config.refresh_interval == 2.5
    [node] = config.nodes
    assert (node.name, node.epmd_port, node.cookie) == ("counter@localhost", 4370, "s3cret")
    assert "s3cret" not in repr(config)


def test_defaults_and_metrics_disabled(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[agent]\nmetrics_listen = ""\n'))
    # On the host, a Unix socket: no token needed, its permissions decide.
    assert config.listen == (UnixAddress(Path("/run/relctl/agent.sock")),)
    assert config.metrics_listen is None
    assert config.state_dir == Path("/var/lib/relctl")
    assert config.nodes == ()


@pytest.mark.parametrize(("text", "key", "reason"), [
    ("[agent]\nlisten = 7079\n", "agent.listen", "must be a string or an array of strings, "
                                                  "not int"),
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


HOOKS = """
[[nodes]]
name = "counter@localhost"
cookie_file = "counter.cookie"

[[nodes.hooks]]
name = "drain"
when = "pre_install"
call = "counter_hooks:run"

[[nodes.hooks]]
name = "clear-static-cache"
when = "post_install"
call = "Elixir.Phoenix.Config:clear_cache"
args = [{atom = "Elixir.MyAppWeb.Endpoint"}, "text", {charlist = "abc"}, 42, 1.5, true]
timeout = 10
on_failure = "continue"

[[nodes.hooks]]
name = "drain"
when = "post_install"
call = "counter_hooks:run"
"""


def test_hooks_keep_their_order_and_args_become_erlang_terms(tmp_path: Path) -> None:
    [node] = load_config(write(tmp_path, HOOKS)).nodes
    assert [h.step for h in node.hooks] == [
        "pre_install:drain", "post_install:clear-static-cache", "post_install:drain"]
    drain, clear, _ = node.hooks
    assert (drain.module, drain.function, drain.args) == ("counter_hooks", "run", ())
    assert (drain.timeout, drain.on_failure) == (30.0, "fail")
    # Strings are binaries (what Elixir and modern Erlang APIs take); the rest is spelled out.
    assert clear.args == (Atom("Elixir.MyAppWeb.Endpoint"), b"text", "abc", 42, 1.5, True)
    assert (clear.timeout, clear.on_failure) == (10.0, "continue")
    assert str(clear) == ("'Elixir.Phoenix.Config':clear_cache('Elixir.MyAppWeb.Endpoint', "
                          '<<"text">>, "abc", 42, 1.5, true)')


HOOK_NODE = '[[nodes]]\nname = "a@h"\ncookie_file = "counter.cookie"\n[[nodes.hooks]]\n'
A_HOOK = 'name = "h"\nwhen = "pre_install"\ncall = "m:f"\n'


@pytest.mark.parametrize(("text", "key", "reason"), [
    (A_HOOK + "retries = 3\n", "nodes[0].hooks[0].retries", "unknown key (known keys: args, call,"),
    ('name = "h"\nwhen = "pre_install"\n', "nodes[0].hooks[0].call", "is required"),
    ('name = "h"\ncall = "m:f"\n', "nodes[0].hooks[0].when", "is required"),
    ('when = "pre_install"\ncall = "m:f"\n', "nodes[0].hooks[0].name", "is required"),
    (A_HOOK.replace("pre_install", "before"), "nodes[0].hooks[0].when",
     "'before' is not one of \"pre_install\", \"post_install\""),
    (A_HOOK.replace('"h"', '"clear cache"'), "nodes[0].hooks[0].name", "is not a hook name"),
    (A_HOOK.replace("m:f", "MyApp.Hooks.clear"), "nodes[0].hooks[0].call",
     "is not \"module:function\" (arguments go in args = [...]; an Elixir module keeps its "
     "prefix: \"Elixir.MyApp.Hooks:clear_cache\")"),
    (A_HOOK.replace("m:f", "m:f()"), "nodes[0].hooks[0].call", "is not \"module:function\""),
    (A_HOOK.replace("m:f", "'m':f"), "nodes[0].hooks[0].call", "is not \"module:function\""),
    (A_HOOK + "timeout = 0\n", "nodes[0].hooks[0].timeout", "must be a positive number"),
    (A_HOOK + "timeout = inf\n", "nodes[0].hooks[0].timeout", "must be a positive number"),
    (A_HOOK + 'timeout = "10s"\n', "nodes[0].hooks[0].timeout", "must be a number, not str"),
    (A_HOOK + 'on_failure = "ignore"\n', "nodes[0].hooks[0].on_failure",
     "'ignore' is not one of \"fail\", \"continue\""),
    (A_HOOK + 'args = "x"\n', "nodes[0].hooks[0].args", "must be an array, not str"),
    (A_HOOK + "args = [1, [2]]\n", "nodes[0].hooks[0].args[1]", "[2] is not a hook argument: "
     "use a string (passed as a binary), an integer, a float, true/false, {atom = \"name\"} or "
     "{charlist = \"text\"}"),
    (A_HOOK + "args = [{atom = 1}]\n", "nodes[0].hooks[0].args[0]", "is not a hook argument"),
    (A_HOOK + "args = [{binary = \"x\"}]\n", "nodes[0].hooks[0].args[0]", "is not a hook argument"),
    (A_HOOK + "args = [nan]\n", "nodes[0].hooks[0].args[0]", "nan has no Erlang form"),
    (A_HOOK + f"args = [{{atom = \"{'a' * 256}\"}}]\n", "nodes[0].hooks[0].args[0]",
     "an atom has at most 255 characters"),
    (A_HOOK + "[[nodes.hooks]]\n" + A_HOOK, "nodes[0].hooks[1].name",
     "a pre_install hook named 'h' is configured twice"),
])
def test_hook_mistakes_name_file_key_and_reason(tmp_path: Path, text: str, key: str,
                                                reason: str) -> None:
    path = write(tmp_path, HOOK_NODE + text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key
    assert reason in info.value.reason
    assert str(info.value).startswith(f"{path}: {key}: ")


def test_hooks_must_be_tables(tmp_path: Path) -> None:
    text = '[[nodes]]\nname = "a@h"\ncookie_file = "counter.cookie"\nhooks = ["m:f"]\n'
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert (info.value.key, info.value.reason) == ("nodes[0].hooks[0]",
                                                   "must be a table ([[nodes.hooks]])")
