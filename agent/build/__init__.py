"""The release build tool: ``relctl make-relup`` and ``relctl make-appup``, run in the user's
build, never on a production host.

It reads two built release roots (mix, rebar3/relx or systools), generates or checks appups
from the beams (appup.py), runs ``systools:make_relup`` in the local ``erl`` and packs the
upgrade tarball (relup.py); erl.py is the one way either starts ``erl``.

It may not know an agent, gRPC, the client's exit codes or the network: it raises
:class:`BuildError`, and the client maps ``bad_input`` to its usage code. It imports only the
standard library, :mod:`agent.relfile` and :mod:`agent.errors`.
"""

from .appup import AppupError, appup_text
from .erl import BuildError
from .relup import AppupReport, RelupError, RelupResult, appups_for, build

__all__ = ["AppupError", "AppupReport", "BuildError", "RelupError", "RelupResult", "appup_text",
           "appups_for", "build"]
