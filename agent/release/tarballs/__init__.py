"""Release tarballs, untrusted until checked: the bounded stream that reads one (stream.py),
the checks of its members and of the release it holds (check.py), and the agent's own
extraction of exactly what the checks accepted into a node's release root (extract.py), in
dirs locked by their live owner so that a killed agent's are told apart (held.py).

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
    UPLOAD_PREFIX,
    Extracted,
    Interrupted,
    NotADirectoryOnNode,
    WriteFailed,
    adopt,
    extract,
    clear_leftovers,
    extract_arriving,
    place,
    planned,
    remove,
    unpack_adds,
    why_not_write,
    write_sha,
)
from .held import HeldDir, Taken, make_held
from .stream import TarballError

__all__ = [
    "MAX_MEMBERS", "MAX_UNPACKED", "TREE", "UNPACK_PREFIX", "UPLOAD_PREFIX", "Contents",
    "Extracted", "HeldDir", "Interrupted", "NotADirectoryOnNode", "ReleaseTarball", "Taken",
    "TarballError", "WriteFailed", "adopt", "check_member", "clear_leftovers", "extract",
    "extract_arriving", "inspect_tarball", "make_held", "normalise", "place", "planned",
    "remove", "unpack_adds", "why_not_write", "write_sha",
]
