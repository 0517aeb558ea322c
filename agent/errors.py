"""The agent's errors, split by who is at fault, each naming what went wrong and what to do.

    AgentError
    ├── ConfigError        the operator's config file
    ├── RequestError       the caller: NotFound (UnknownNode), AuthError (api), TarballError,
    │                      UploadRefused (release, operations)
    ├── Conflict           another operation holds the node: OperationInProgress
    ├── NodeUnavailable    the node or the network: NodeDown, NodeTimeout
    ├── NodeFault          the node answered what the agent cannot use: UnexpectedReply
    └── HostError          the agent's own host (disk, sockets): StartupError, SocketError,
                           JournalError

Subclasses live with the package that raises them. The gRPC servicer maps them to status
codes; nothing below it knows about gRPC.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of the agent's own errors."""


class ConfigError(AgentError):
    """The configuration file is wrong: names the file, the key and the reason."""

    def __init__(self, path: str, key: str, reason: str) -> None:
        self.path = path
        self.key = key
        self.reason = reason
        where = f"{path}: {key}: " if key else f"{path}: "
        super().__init__(where + reason)


class RequestError(AgentError):
    """The caller asked for something that cannot be (their fault)."""


class NotFound(RequestError):
    """The caller named something that does not exist (node, upload, operation, version)."""


class Conflict(AgentError):
    """Another operation holds what this request needs; retrying later may succeed."""


class OperationInProgress(Conflict):
    def __init__(self, op_id: int, kind: str, node: str) -> None:
        self.op_id = op_id
        super().__init__(f"operation {op_id} ({kind}) is in progress on {node}; wait for it "
                         f"(relctl operation {op_id}) and try again")


class UnknownNode(NotFound):
    def __init__(self, node: str, managed: list[str]) -> None:
        self.node = node
        known = ", ".join(managed) if managed else "none"
        super().__init__(f"this agent does not manage node {node} (it manages: {known}); "
                         "check --node, or add the node to the agent's config")


class NodeUnavailable(AgentError):
    """The node cannot serve the request now (the node's or the network's fault)."""

    def __init__(self, node: str, message: str) -> None:
        self.node = node
        super().__init__(message)


class NodeDown(NodeUnavailable):
    def __init__(self, node: str, reason: str) -> None:
        self.reason = reason
        super().__init__(node, f"node {node} is down: {reason}")


class NodeFault(AgentError):
    """The node answered, but not in a form the agent can use (the node's fault)."""


class HostError(AgentError):
    """The agent's own host failed it: a file, a directory or a socket (the host's fault)."""


class ReplyTooLarge(NodeFault):
    """The node's reply to one call is over the decode budget ([agent] max_term_*); only that
    call failed and the connection stays up."""

    def __init__(self, node: str, message: str) -> None:
        self.node = node
        super().__init__(f"node {node}: {message}")


class NodeTimeout(NodeUnavailable):
    """Connected, but the node did not answer in time."""

    def __init__(self, node: str, what: str, timeout: float) -> None:
        super().__init__(node, f"node {node} did not answer {what} within {timeout:g} s; "
                               "it may be overloaded")
