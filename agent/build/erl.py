"""The build-time ``erl``: found once, started with an environment that cannot change what it
does behind our back, given one timeout; and the error every build step raises."""

from __future__ import annotations

import os
import shutil

ERL_TIMEOUT = 120.0

# Environment variables that would change what the build-time erl loads or evaluates: the
# user's shell may set them for their own work, and a relup must not depend on them.
ENV_NOISE = ("ERL_FLAGS", "ERL_AFLAGS", "ERL_ZFLAGS", "ERL_LIBS", "ERL_ROOTDIR",
             "ERL_COMPILER_OPTIONS")


class BuildError(Exception):
    """What went wrong and what to do. ``bad_input``: the paths or versions given do not fit
    (a usage error) rather than systools, the beams or the machine failing."""

    def __init__(self, message: str, *, bad_input: bool = False) -> None:
        super().__init__(message)
        self.bad_input = bad_input


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without :data:`ENV_NOISE`, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_NOISE}
    env.update(extra)
    return env


def erl_path(erl: str) -> str:
    """The executable ``erl`` names (a name looked up on PATH, or a path)."""
    found = shutil.which(erl)
    if found is None:
        where = "on PATH" if os.sep not in erl else "there"
        raise BuildError(f"erl not found ({erl!r} is not {where}); install Erlang/OTP (the "
                         "version the release was built with, whose sasl has systools) or "
                         "pass --erl /path/to/erl")
    return found
