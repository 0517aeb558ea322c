"""Links to the BEAM nodes of this host: one kept-open bridge connection per node with its
reconnects and cookie reloads (link.py), the set of managed nodes (manager.py) and their
discovery through EPMD (discovery.py).

The only users of bridge ``Connection``s; they offer the release engine its ``Caller``. They
may not know gRPC, the journal or Prometheus.
"""

from .discovery import Discovery
from .link import NodeLink, NodeState, PingResult
from .manager import NodeManager

__all__ = ["Discovery", "NodeLink", "NodeManager", "NodeState", "PingResult"]
