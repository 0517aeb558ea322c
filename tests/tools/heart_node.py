"""A release node under heart, as release_handler needs one for relups that restart the
emulator (restart_new_emulator, restart_emulator): heart:set_cmd, then init:reboot, and heart
runs the release's start program, which boots what the start_erl.data it is given names.

The emulators heart starts are not children of the test, so they are found (and stopped) by
their command line naming the release root.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

# release_handler's start program (sasl's start_prg defaults to ROOT/bin/start): heart runs it
# with the start_erl.data to boot (releases/new_start_erl.data after a relup's restart) when
# the emulator reboots. It boots that release, with that ERTS, as bin/counter does, with the
# node's arguments (bin/node.args).
START = """#!/bin/sh
bin=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd -P)
ROOTDIR=$(dirname -- "$bin")
read -r ERTS_VSN REL_VSN < "${1:-$ROOTDIR/releases/start_erl.data}"
BINDIR="$ROOTDIR/erts-$ERTS_VSN/bin"
EMU=beam
PROGNAME=counter
export ROOTDIR BINDIR EMU PROGNAME
REL_DIR="$ROOTDIR/releases/$REL_VSN"
# The release restart_new_emulator boots first (__new_emulator__OLD_VSN, the old release on
# the new OTP, until the rest of the relup has run) has only start.boot and sys.config.
set --
[ -f "$REL_DIR/vm.args" ] && set -- -args_file "$REL_DIR/vm.args"
exec "$BINDIR/erlexec" -boot "$REL_DIR/start" -config "$REL_DIR/sys" "$@" \\
    -mode embedded -noshell -noinput $(cat "$bin/node.args") >>"$ROOTDIR/heart-boots.log" 2>&1
"""
NODE_ARGS = "-sname counter@localhost -start_epmd false -kernel inet_dist_use_interface " \
            "{127,0,0,1} -heart"


def install_start(root: Path) -> None:
    """Give the release in ``root`` the start program heart runs (bin/start, bin/node.args)."""
    (root / "bin" / "start").write_text(START)
    (root / "bin" / "start").chmod(0o755)
    (root / "bin" / "node.args").write_text(NODE_ARGS)


def emulators_of(root: Path) -> list[int]:
    """Pids of the emulators running the release in ``root``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"beam.smp") and any(
                    str(root).encode() in a for a in argv):
                found.append(int(entry.name))
    return found


def stop_emulators(root: Path) -> None:
    """SIGTERM (init:stop, which heart does not restart) each, SIGKILL what is left after
    10 s."""
    for pid in emulators_of(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while emulators_of(root) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in emulators_of(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
