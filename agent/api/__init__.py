"""The gRPC face of the agent (``relctl.v1.Agent``): the service that maps calls to operations
and node reads (service.py, messages.py), the interceptor that authenticates, limits and
audits every call (interceptor.py, auth.py, limits.py, audit.py), the Unix-socket front
that gives each caller its uid (unix_front.py), and the TCP front that caps what callers
without a token can hold of the agent's connections and descriptors (tcp_front.py).

The only room that knows grpc and the generated stubs; it may not know prometheus_client,
SQLite (it asks agent.operations) or the bridge (it asks agent.nodes).
"""

from .audit import FILE_NAME as AUDIT_FILE
from .audit import AuditLog
from .auth import Authenticator
from .interceptor import AccessInterceptor
from .limits import connection_caps
from .service import AgentService, ApiServer
from .tcp_front import TcpFront, descriptor_limit
from .unix_front import SocketError, UnixFront

__all__ = ["AUDIT_FILE", "AccessInterceptor", "AgentService", "ApiServer", "AuditLog",
           "Authenticator", "SocketError", "TcpFront", "UnixFront", "connection_caps",
           "descriptor_limit"]
