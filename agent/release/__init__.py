"""The release engine: every operation on one node's releases (upgrade, downgrade, the single
steps, config reload), each a declared flow of steps (flows.py) over a small call protocol
(``Caller``), with one undo (staging.py, run by ``core.guarded``) and the checks that refuse
before anything changes (preflight.py, ertscheck.py, inuse.py).

It may not know gRPC, Prometheus, SQLite or sockets: it talks to the node through ``Caller``,
reports steps to a callback, and keeps what must outlive an operation through the
``UnpackLedger`` its caller gives it (the journal, in agent.operations). The tarball's checks
and the agent's own extraction live in the tarballs/ sub-room.
"""

from .beams import BEAMS, ebins
from .codecheck import verify_running
from .core import UnpackLedger, node_dirs
from .options import Requested, operation_options
from .releases import Release, UnexpectedReply, parse_which_releases
from .reload import ConfigReload, ReloadOptions
from .tarballs import (
    TREE,
    UPLOAD_PREFIX,
    Contents,
    Extracted,
    HeldDir,
    Interrupted,
    ReleaseTarball,
    TarballError,
    Taken,
    WriteFailed,
    extract_arriving,
    inspect_tarball,
    make_held,
    why_not_write,
)
from .upgrade import ReleaseEngine
from .values import (
    FAILED,
    OUTCOMES,
    STEP_STATES,
    Caller,
    ConfigChange,
    Failure,
    Options,
    Placing,
    Probe,
    Result,
    StepRecord,
)

# What the rooms above the engine (nodes, operations, api, daemon) may use; they import the
# package, never its modules (tests/test_layout.py).
__all__ = [
    "BEAMS", "FAILED", "OUTCOMES", "STEP_STATES", "TREE", "UPLOAD_PREFIX", "Caller",
    "ConfigChange", "ConfigReload", "Contents", "Extracted", "Failure", "HeldDir", "Interrupted",
    "Options", "Placing", "Probe", "Release", "ReleaseEngine", "ReleaseTarball", "ReloadOptions",
    "Requested", "Result", "StepRecord", "Taken", "TarballError", "UnexpectedReply",
    "UnpackLedger", "WriteFailed", "ebins", "extract_arriving", "inspect_tarball", "make_held",
    "node_dirs", "operation_options", "parse_which_releases", "verify_running", "why_not_write",
]
