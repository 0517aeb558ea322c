"""The agent's configuration as frozen values, and every default, written once.

Parsing (agent/config/parse.py) fills these from the TOML file without touching anything
else: paths are kept as written. Loading then makes the paths absolute and fills in this
host's name (agent/config/locate.py: the fields marked "located"), and reads the secrets the
file names (agent/config/secrets.py: cookies, tokens, PEM files, the fields marked "loaded").
Secrets are kept out of every repr.

Every default of a setting is written here once, as the default of its field (or a constant
below); the rest of the agent takes the values as required arguments.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bridge import Atom, DecodeBudget, format_term

DEFAULT_CONFIG = "/etc/relctl/agent.toml"  # relctl-agent --config, and the unit's
DEFAULT_SOCKET = "/run/relctl/agent.sock"
DEFAULT_LISTEN = f"unix:{DEFAULT_SOCKET}"
DEFAULT_METRICS_LISTEN = "127.0.0.1:9568"
DEFAULT_STATE_DIR = "/var/lib/relctl"
DEFAULT_EPMD_PORT = 4369
DEFAULT_SOCKET_MODE = 0o660
DEFAULT_COOKIE_FILE = "~/.erlang.cookie"  # what erl itself reads when no cookie is named
# How long a node restarted by release_handler (a relup with restart_emulator) may take to
# come back up; not a config key yet, but an operation's option (agent.release Options).
RESTART_TIMEOUT = 60.0

# Roles of a bearer token: a viewer reads, an operator may change nodes.
VIEWER = "viewer"
OPERATOR = "operator"
ROLES = (VIEWER, OPERATOR)
MIN_TOKEN_LENGTH = 16

# Hooks: when they run, and what a failing one does.
PRE_INSTALL = "pre_install"
POST_INSTALL = "post_install"
WHEN = (PRE_INSTALL, POST_INSTALL)
FAIL = "fail"          # a failing hook fails the operation (the default)
CONTINUE = "continue"  # a failing hook is shown failed and the operation goes on
ON_FAILURE = (FAIL, CONTINUE)

# Short-lived helper nodes, not services: remote shells and rpc of the mix and relx start
# scripts, erl_call, and relctl itself.
DEFAULT_DISCOVERY_EXCLUDE = ("rem-*", "remsh*", "rpc-*", "erl_call*", "erlcall*",
                             "maint_*", "relctl*")


@dataclass(frozen=True)
class SecretRef:
    """Where a secret is: a file, or a systemd credential (a file in $CREDENTIALS_DIRECTORY,
    found when the secrets are loaded). ``key`` is the config key, for messages."""

    key: str
    file: Path | None = None
    credential: str | None = None

    def __str__(self) -> str:
        return str(self.file) if self.file is not None else f"credential {self.credential}"


@dataclass(frozen=True)
class Address:
    """A TCP listen address; ``host`` is bare (no brackets for IPv6)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True)
class UnixAddress:
    path: Path

    def __str__(self) -> str:
        return f"unix:{self.path}"

    @property
    def is_loopback(self) -> bool:
        return True


Endpoint = Address | UnixAddress


@dataclass(frozen=True)
class Token:
    name: str                     # the identity in the audit trail
    role: str
    secret: str = field(repr=False, default="")  # loaded
    source: str = ""              # the file or credential it came from, for messages
    ref: SecretRef | None = field(default=None, compare=False)

    @property
    def digest(self) -> bytes:
        # Compared as fixed-length digests, so the comparison time does not depend on
        # the length of what the caller sent either.
        return hashlib.sha256(self.secret.encode()).digest()


@dataclass(frozen=True)
class ApiTls:
    """The gRPC server's certificate, and the CA of client certificates when mTLS is on."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None
    cert: bytes = field(repr=False, default=b"")  # loaded
    key: bytes = field(repr=False, default=b"")   # loaded
    client_ca: bytes | None = field(repr=False, default=None)  # loaded


@dataclass(frozen=True)
class DistributionTls:
    """[distribution_tls]: how the agent reaches nodes started with -proto_dist inet_tls."""

    path: Path  # the config file, for errors
    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    # On by default, as OTP does: a node that verifies its peers checks the other node's
    # certificate against the host part of that node's name (sent as SNI), so certificates
    # that work between OTP nodes name their hosts and pass this check too. Off, any
    # certificate the CA signed is accepted for any node: only for a CA private to the cluster.
    verify_hostname: bool = True
    server_name: str | None = None  # checked instead of the host part of each node's name


@dataclass(frozen=True)
class Hook:
    """An RPC made on the node before or after install (``[[nodes.hooks]]``)."""

    name: str                  # names its step: "pre_install:NAME"
    when: str                  # PRE_INSTALL or POST_INSTALL
    module: str
    function: str
    args: tuple[Any, ...] = ()  # Erlang terms as the bridge encodes them
    timeout: float = 30.0
    on_failure: str = FAIL

    @property
    def step(self) -> str:
        return f"{self.when}:{self.name}"

    def __str__(self) -> str:
        args = ", ".join(format_term(a) for a in self.args)
        return f"{format_term(Atom(self.module))}:{format_term(Atom(self.function))}({args})"


@dataclass(frozen=True)
class NodeConfig:
    name: str
    cookie_file: Path | None = None  # None until loaded when the cookie is a credential
    cookie: str = field(repr=False, default="")  # loaded
    epmd_port: int = DEFAULT_EPMD_PORT
    health_probes: tuple[tuple[str, str], ...] = ()  # (module, function): must return ok
    health_soak: float = 0.0        # seconds the probes must keep passing after an install
    install_timeout: float = 300.0  # install_release may run a long code_change
    hooks: tuple[Hook, ...] = ()    # [[nodes.hooks]], in file order
    cookie_ref: SecretRef | None = field(default=None, compare=False)


@dataclass(frozen=True)
class DiscoveryConfig:
    """[discovery]: used when the config has no [[nodes]]."""

    path: Path                      # the config file, for error messages
    host: str                       # the host part of the discovered node names; located:
                                    # "" (not configured) becomes this host's short name
    epmd_port: int = DEFAULT_EPMD_PORT
    cookie_file: Path | None = None  # the default cookie; None: only cookie_dir's (located:
                                     # ~/.erlang.cookie when no cookie is named)
    cookie: str | None = field(default=None, repr=False)  # loaded
    cookie_dir: Path | None = None  # per-node cookies: cookie_dir/ALIVE
    exclude: tuple[str, ...] = DEFAULT_DISCOVERY_EXCLUDE  # fnmatch patterns on ALIVE
    interval: float = 15.0          # seconds between two looks at EPMD
    cookie_ref: SecretRef | None = field(default=None, compare=False)  # None: ~/.erlang.cookie


@dataclass(frozen=True)
class AgentConfig:
    path: Path
    listen: tuple[Endpoint, ...]
    metrics_listen: Address | None  # None: /metrics disabled
    state_dir: Path
    nodes: tuple[NodeConfig, ...]
    refresh_interval: float = 15.0   # seconds between which_releases refreshes of an up node
    rpc_timeout: float = 30.0        # default for read RPCs to a node
    connect_timeout: float = 5.0
    reconnect_max_delay: float = 30.0  # cap of the reconnect backoff
    shutdown_grace: float = 5.0      # how long running gRPC calls may finish on SIGTERM
    operations_grace: float = 120.0  # how long a running upgrade may finish on SIGTERM
    max_upload_bytes: int = 2 * 1024**3
    uploads_max_bytes: int = 8 * 1024**3  # all uploads held at once (received or being sent)
    upload_idle_expiry: float = 3600.0  # seconds an upload may sit unused (or get no data)
    metrics_max_connections: int = 64  # /metrics connections open at once; more get a 503
    # The decode budget's caps for one message from a node (bridge.DecodeBudget): the items of
    # its tuples, lists and maps, and the bytes of its binaries and strings.
    max_term_elements: int = DecodeBudget().max_elements
    max_term_bytes: int = DecodeBudget().max_bytes
    metrics_idle_timeout: float = 10.0  # seconds a /metrics connection may wait for its request
    discovery: DiscoveryConfig | None = None  # set when [[nodes]] is omitted
    tokens: tuple[Token, ...] = ()
    tls: ApiTls | None = None        # [agent.tls]: TLS on the TCP listeners
    insecure_no_auth: bool = False   # loopback TCP without tokens (tests, demos)
    socket_mode: int = DEFAULT_SOCKET_MODE
    socket_group: str | None = None  # group of the Unix socket; None: the agent's
    socket_gid: int | None = None    # loaded: socket_group's id
    distribution_tls: DistributionTls | None = None  # [distribution_tls]: TLS to every node
    located: bool = False            # paths made absolute, host filled in (locate.py)
    loaded: bool = False             # the secrets were read (agent/config/secrets.py)


def is_host_name(text: str) -> bool:
    """Whether ``text`` can be the host part of a node name (``alive@HOST``)."""
    return bool(text) and "@" not in text and not any(ch.isspace() for ch in text)


def default(cls: type, name: str) -> Any:
    """The default of field ``name`` of dataclass ``cls``: the parser's fallback, so that each
    default is written once, in the class."""
    for f in fields(cls):
        if f.name == name:
            return f.default
    raise KeyError(f"{cls.__name__} has no field {name}")
