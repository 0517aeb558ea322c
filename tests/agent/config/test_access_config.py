"""Who may call the agent, as configured: listeners, tokens, TLS, cookies and systemd
credentials. Each mistake names the file, the key and what to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.api.auth import READ_ONLY_RPCS, Authenticator, AuthError
from agent.config import OPERATOR, VIEWER, Address, Token, UnixAddress, load_config
from agent.errors import ConfigError

TOKEN = "a" * 12 + "0123456789"


def private(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def config(tmp_path: Path, text: str) -> Path:
    private(tmp_path / "deploy.token", TOKEN + "\n")
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


TOKENS = """
[[tokens]]
name = "deploy-bot"
role = "operator"
file = "deploy.token"
"""


def test_listen_takes_a_socket_and_tcp_addresses(tmp_path: Path) -> None:
    loaded = load_config(config(tmp_path, '[agent]\nlisten = ["unix:/run/relctl/agent.sock", '
                                          '"127.0.0.1:7079"]\nsocket_mode = 0o600\n' + TOKENS))
    assert loaded.listen == (UnixAddress(Path("/run/relctl/agent.sock")),
                             Address("127.0.0.1", 7079))
    assert loaded.socket_mode == 0o600
    assert [t.name for t in loaded.tokens] == ["deploy-bot"]


@pytest.mark.parametrize(("text", "key", "reason"), [
    ('[agent]\nlisten = "127.0.0.1:7079"\n', "agent.listen",
     "is a TCP listener: it needs bearer tokens"),
    ('[agent]\nlisten = "10.1.2.3:7079"\n' + TOKENS, "agent.listen",
     "is not a loopback address: it needs TLS"),
    ('[agent]\nlisten = "10.1.2.3:7079"\ninsecure_no_auth = true\n', "agent.insecure_no_auth",
     "loopback addresses only"),
    ('[agent]\nlisten = "unix:relative.sock"\n', "agent.listen", "must be absolute"),
    ('[agent]\nlisten = ["unix:/a.sock", "unix:/a.sock"]\n', "agent.listen[1]", "listed twice"),
    ('[agent]\nlisten = []\n', "agent.listen", "must be an address or an array"),
    ('[agent]\nsocket_mode = 0o666\n', "agent.socket_mode", "lets every user of the host"),
    ('[agent]\nsocket_group = "no-such-group-here"\n', "agent.socket_group", "no group"),
    ('[agent]\ninsecure_no_auth = "yes"\n', "agent.insecure_no_auth", "must be true or false"),
    ('[[tokens]]\nname = "x"\nrole = "admin"\nfile = "deploy.token"\n', "tokens[0].role",
     "is not one of \"viewer\", \"operator\""),
    ('[[tokens]]\nname = "x"\nrole = "viewer"\n', "tokens[0].file", "is required"),
    ('[[tokens]]\nname = "x"\nrole = "viewer"\nfile = "deploy.token"\ncredential = "t"\n',
     "tokens[0].credential", "not both"),
    (TOKENS + TOKENS.replace("deploy-bot", "other"), "tokens[1].file",
     "holds the same token as"),
    (TOKENS + TOKENS, "tokens[1].name", "configured twice"),
])
def test_access_mistakes(tmp_path: Path, text: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(config(tmp_path, text))
    assert info.value.key == key
    assert reason in info.value.reason


def test_a_short_or_shared_token_file_is_refused(tmp_path: Path) -> None:
    path = config(tmp_path, TOKENS)
    private(tmp_path / "deploy.token", "short\n")
    with pytest.raises(ConfigError, match=r"has 5 characters; use at least 16 \(openssl rand"):
        load_config(path)
    private(tmp_path / "deploy.token", TOKEN, mode=0o644)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "tokens[0].file"
    assert "readable by every user of this host (mode 0644)" in info.value.reason
    assert f"chmod o-rwx {tmp_path / 'deploy.token'}" in info.value.reason


def test_a_cookie_readable_by_others_is_refused_with_path_and_mode(tmp_path: Path) -> None:
    cookie = private(tmp_path / "node.cookie", "secret\n", mode=0o644)
    path = config(tmp_path, '[[nodes]]\nname = "a@h"\ncookie_file = "node.cookie"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "nodes[0].cookie_file"
    assert f"cookie file {cookie} is readable by every user of this host (mode 0644)" in str(
        info.value)
    cookie.chmod(0o640)  # the node's group may read it: that is how the agent gets it
    assert load_config(path).nodes[0].cookie == "secret"


def test_cookie_and_token_from_systemd_credentials(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    private(creds / "shop-cookie", "credcookie\n", mode=0o400)
    private(creds / "bot-token", TOKEN + "xyz\n", mode=0o400)
    text = ('[[nodes]]\nname = "shop@h"\ncookie_credential = "shop-cookie"\n'
            '[[tokens]]\nname = "bot"\nrole = "viewer"\ncredential = "bot-token"\n')
    path = config(tmp_path, text)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ConfigError, match=r"needs \$CREDENTIALS_DIRECTORY, which is not set"):
        load_config(path)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    loaded = load_config(path)
    assert loaded.nodes[0].cookie == "credcookie"
    assert loaded.nodes[0].cookie_file == creds / "shop-cookie"
    assert (loaded.tokens[0].name, loaded.tokens[0].role) == ("bot", VIEWER)
    (creds / "bot-token").unlink()
    with pytest.raises(ConfigError, match="add LoadCredential=bot-token:FILE to the unit"):
        load_config(path)


# --- the authenticator ---------------------------------------------------------------------

def authenticator(insecure: bool = False) -> Authenticator:
    return Authenticator([Token("deploy-bot", OPERATOR, "op-" + TOKEN),
                          Token("dashboard", VIEWER, "view-" + TOKEN)], insecure_no_auth=insecure)


def test_tokens_name_the_caller_and_roles_limit_it() -> None:
    auth = authenticator()
    peer = "ipv4:10.0.0.5:4242"
    op = auth.from_token([("authorization", "Bearer op-" + TOKEN)], peer)
    assert (op.name, op.role, op.peer) == ("deploy-bot", OPERATOR, peer)
    viewer = auth.from_token([("authorization", "bearer view-" + TOKEN)], peer)
    assert viewer.name == "dashboard"
    for rpc in READ_ONLY_RPCS:
        auth.authorize(viewer, rpc)
    for rpc in ("Upgrade", "Upload", "ListAudit", "SomethingAddedLater"):
        with pytest.raises(AuthError) as info:
            auth.authorize(viewer, rpc)
        assert info.value.code == "permission_denied"
        assert f"dashboard has the role viewer; {rpc} needs the role operator" in str(info.value)
        auth.authorize(op, rpc)


@pytest.mark.parametrize(("metadata", "message"), [
    ([], "no credentials: this agent needs a bearer token on TCP; pass --token-file"),
    ([("authorization", "Basic dXNlcjpwYXNz")], 'is not "Bearer TOKEN"'),
    ([("authorization", "Bearer op-" + TOKEN + "x")], "unknown token"),
    ([("authorization", "Bearer ")], "unknown token"),
])
def test_missing_or_wrong_tokens_are_unauthenticated(metadata: list[tuple[str, str]],
                                                     message: str) -> None:
    with pytest.raises(AuthError) as info:
        authenticator().from_token(metadata, "ipv4:127.0.0.1:1")
    assert info.value.code == "unauthenticated" and message in str(info.value)
    assert info.value.identity is not None and info.value.identity.peer == "ipv4:127.0.0.1:1"


def test_insecure_no_auth_lets_tokenless_calls_in_as_anonymous_but_still_checks_tokens() -> None:
    auth = authenticator(insecure=True)
    anonymous = auth.from_token([], "ipv4:127.0.0.1:1")
    assert (anonymous.name, anonymous.role) == ("anonymous", OPERATOR)
    with pytest.raises(AuthError, match="unknown token"):
        auth.from_token([("authorization", "Bearer wrong-token-123456")], "ipv4:127.0.0.1:1")


def test_unix_callers_are_named_by_uid_and_strangers_are_refused() -> None:
    identity = Authenticator.from_unix_peer(0, "unix:/run/relctl/agent.sock (pid 7)")
    assert identity.name == "uid 0 (root)" and identity.role == OPERATOR
    with pytest.raises(AuthError, match="did not come through the agent's Unix socket"):
        Authenticator.from_unix_peer(None, "unix:")


def test_agent_tls_files_are_checked_when_the_config_is_read(tmp_path: Path) -> None:
    cert = private(tmp_path / "agent.crt", "-----BEGIN CERTIFICATE-----\nMII...\n", 0o644)
    key = private(tmp_path / "agent.key", "-----BEGIN PRIVATE KEY-----\nMII...\n", 0o644)
    text = ('[agent]\nlisten = "10.1.2.3:7079"\n[agent.tls]\ncert_file = "agent.crt"\n'
            'key_file = "agent.key"\n' + TOKENS)
    with pytest.raises(ConfigError) as info:
        load_config(config(tmp_path, text))
    assert info.value.key == "agent.tls.key_file"
    assert f"key file {key} is readable by every user of this host (mode 0644)" in str(info.value)
    key.chmod(0o600)
    loaded = load_config(config(tmp_path, text))
    assert loaded.tls is not None and loaded.tls.client_ca is None  # no mTLS without a CA
    assert b"PRIVATE KEY" not in repr(loaded).encode()
    cert.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="is not a PEM file with a certificate") as info:
        load_config(config(tmp_path, text))
    assert info.value.key == "agent.tls.cert_file"
