"""`relctl-agent --check-config`: the config and its secrets are checked, nothing is started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from agent.config import read_config

ROOT = Path(__file__).resolve().parents[3]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)


def test_a_valid_config_exits_0_with_a_summary_and_starts_nothing(tmp_path: Path) -> None:
    cookie = tmp_path / "cookie"
    cookie.write_text("secretcookie\n")
    cookie.chmod(0o600)
    state = tmp_path / "state"
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\nlisten = "unix:{tmp_path}/agent.sock"\nstate_dir = "{state}"\n'
                      '[[nodes]]\nname = "counter@localhost"\ncookie_file = "cookie"\n')
    proc = run("--check-config", str(config))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (f"{config}: ok; listen unix:{tmp_path}/agent.sock "
                                   "(no tokens); nodes: counter@localhost")
    # Nothing was started: no state directory, no socket.
    assert not state.exists() and not (tmp_path / "agent.sock").exists()


def test_a_secret_that_others_can_read_exits_78_with_the_file_and_the_key(tmp_path: Path) -> None:
    cookie = tmp_path / "cookie"
    cookie.write_text("secretcookie\n")
    cookie.chmod(0o644)
    config = tmp_path / "agent.toml"
    config.write_text('[[nodes]]\nname = "counter@localhost"\ncookie_file = "cookie"\n')
    proc = run("--check-config", str(config))
    assert proc.returncode == 78
    assert (f"configuration error: {config}: nodes[0].cookie_file: cookie file {cookie} is "
            "readable by every user of this host") in proc.stderr
    # Parsing alone never reads the cookie: the same file parses.
    assert read_config(config).nodes[0].cookie == ""


def test_parsing_reads_no_file_but_the_config(tmp_path: Path) -> None:
    """Every file the config names is missing: parsing succeeds, loading names the first."""
    config = tmp_path / "agent.toml"
    config.write_text('[agent]\nlisten = ["unix:/run/x.sock", "127.0.0.1:7079"]\n'
                      'socket_group = "no-such-group-here"\n'
                      '[agent.tls]\ncert_file = "a.crt"\nkey_file = "a.key"\n'
                      '[[tokens]]\nname = "bot"\nrole = "viewer"\nfile = "bot.token"\n'
                      '[[nodes]]\nname = "a@h"\ncookie_credential = "a-cookie"\n'
                      '[distribution_tls]\nca_file = "ca.crt"\n')
    parsed = read_config(config)
    assert parsed.tls is not None and parsed.tls.cert == b""
    assert parsed.tokens[0].secret == "" and parsed.socket_gid is None
    assert parsed.nodes[0].cookie_ref is not None
    assert parsed.nodes[0].cookie_ref.credential == "a-cookie"
    proc = run("--check-config", str(config))
    assert proc.returncode == 78
    assert "configuration error:" in proc.stderr and "Traceback" not in proc.stderr


def test_credentials_outside_the_unit_are_named_in_a_warning_and_the_rest_is_checked(
        tmp_path: Path) -> None:
    """A production config with its cookie as a systemd credential, checked by an operator
    before `systemctl restart`: the credential exists only inside the unit (issue 22, 4)."""
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\nlisten = "unix:{tmp_path}/agent.sock"\n'
                      f'state_dir = "{tmp_path}/state"\n'
                      '[[nodes]]\nname = "myapp@host"\ncookie_credential = "myapp-cookie"\n')
    proc = run("--check-config", str(config))
    assert proc.returncode == 0, proc.stderr
    assert (f"warning: {config}: nodes[0].cookie_credential: credential 'myapp-cookie' is given "
            "by the unit at start (LoadCredential=myapp-cookie:FILE); not checked here"
            ) in proc.stderr
    assert proc.stdout.strip().endswith("nodes: myapp@host"), proc.stdout
    # A real mistake beside it is still 78.
    config.write_text(config.read_text() + '[[nodes]]\nname = "b@host"\ncookie_file = "nope"\n')
    proc = run("--check-config", str(config))
    assert proc.returncode == 78, proc.stderr
    assert "nodes[1].cookie_file" in proc.stderr and "does not exist" in proc.stderr


def test_inside_the_unit_a_missing_credential_is_a_mistake(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[[nodes]]\nname = "myapp@host"\ncookie_credential = "myapp-cookie"\n')
    (tmp_path / "creds").mkdir()
    proc = subprocess.run([sys.executable, "-m", "agent", "--check-config", str(config)],
                          cwd=ROOT, capture_output=True, text=True, timeout=30,
                          env={**os.environ, "CREDENTIALS_DIRECTORY": str(tmp_path / "creds")})
    assert proc.returncode == 78, proc.stderr
    assert "credential 'myapp-cookie' is not in $CREDENTIALS_DIRECTORY" in proc.stderr
