"""Release tarballs, untrusted until checked: the bounded stream that reads one (stream.py),
the checks of its members and of the release it holds (check.py), and the agent's own
extraction of exactly what the checks accepted into a node's release root (extract.py).

It may not know the node, the engine's steps or the journal: it reads files and writes under
the root it is given, and every refusal is a ``TarballError`` naming the file and what to do.
"""

from .check import (
    MAX_MEMBERS,
    MAX_UNPACKED,
    Contents,
    ReleaseTarball,
    check_member,
    inspect_tarball,
    normalise,
)
from .extract import (
    TREE,
    UNPACK_PREFIX,
    Extracted,
    Interrupted,
    NotADirectoryOnNode,
    WriteFailed,
    adopt,
    extract,
    extract_arriving,
    leftovers,
    place,
    remove,
    why_not_write,
    write_sha,
)
from .stream import TarballError

__all__ = [
    "MAX_MEMBERS", "MAX_UNPACKED", "TREE", "UNPACK_PREFIX", "Contents", "Extracted",
    "Interrupted", "NotADirectoryOnNode", "ReleaseTarball", "TarballError", "WriteFailed",
    "adopt", "check_member", "extract", "extract_arriving", "inspect_tarball", "leftovers",
    "normalise", "place", "remove", "why_not_write", "write_sha",
]
