"""Distribution capability flags (kernel/include/dist.hrl) and the set this bridge offers."""

from __future__ import annotations

from enum import IntFlag

__all__ = ["DFlag", "OUR_FLAGS", "REQUIRED_FROM_PEER", "SPAWN_CALLS", "describe"]


class DFlag(IntFlag):
    PUBLISHED = 0x01
    ATOM_CACHE = 0x02
    EXTENDED_REFERENCES = 0x04
    DIST_MONITOR = 0x08
    FUN_TAGS = 0x10
    DIST_MONITOR_NAME = 0x20
    HIDDEN_ATOM_CACHE = 0x40
    NEW_FUN_TAGS = 0x80
    EXTENDED_PIDS_PORTS = 0x100
    EXPORT_PTR_TAG = 0x200
    BIT_BINARIES = 0x400
    NEW_FLOATS = 0x800
    UNICODE_IO = 0x1000
    DIST_HDR_ATOM_CACHE = 0x2000
    SMALL_ATOM_TAGS = 0x4000
    UTF8_ATOMS = 0x10000
    MAP_TAG = 0x20000
    BIG_CREATION = 0x40000
    SEND_SENDER = 0x80000
    BIG_SEQTRACE_LABELS = 0x100000
    EXIT_PAYLOAD = 0x400000
    FRAGMENTS = 0x800000
    HANDSHAKE_23 = 0x1000000
    UNLINK_ID = 0x2000000
    MANDATORY_25_DIGEST = 0x4000000
    SPAWN = 1 << 32
    NAME_ME = 1 << 33
    V4_NC = 1 << 34
    ALIAS = 1 << 35


# What OTP 25 requires of every peer; MANDATORY_25_DIGEST stands for all of them at once.
MANDATORY_25 = (
    DFlag.EXTENDED_REFERENCES
    | DFlag.FUN_TAGS
    | DFlag.EXTENDED_PIDS_PORTS
    | DFlag.UTF8_ATOMS
    | DFlag.NEW_FUN_TAGS
    | DFlag.BIG_CREATION
    | DFlag.NEW_FLOATS
    | DFlag.MAP_TAG
    | DFlag.EXPORT_PTR_TAG
    | DFlag.BIT_BINARIES
    | DFlag.HANDSHAKE_23
)

# Never PUBLISHED (we stay hidden), never FRAGMENTS or DIST_HDR_ATOM_CACHE (so every message
# arrives whole in pass-through form). V4_NC and UNLINK_ID are mandatory from OTP 26 on.
# SPAWN: calls are spawn requests (see rpc). A node sends MONITOR_P_EXIT only to a peer with
# both DIST_MONITOR and DIST_MONITOR_NAME (erts dist.c, erts_dsig_send_m_exit), so both are set.
OUR_FLAGS = (
    MANDATORY_25
    | DFlag.MANDATORY_25_DIGEST
    | DFlag.DIST_MONITOR
    | DFlag.DIST_MONITOR_NAME
    | DFlag.SPAWN
    | DFlag.SMALL_ATOM_TAGS
    | DFlag.UNICODE_IO
    | DFlag.BIG_SEQTRACE_LABELS
    | DFlag.EXIT_PAYLOAD
    | DFlag.UNLINK_ID
    | DFlag.V4_NC
)

# The codec speaks only the modern encodings; a peer without these cannot talk to us.
REQUIRED_FROM_PEER = MANDATORY_25


# What a spawn-request call needs from the negotiated flags; without it calls go through rex.
SPAWN_CALLS = DFlag.SPAWN | DFlag.DIST_MONITOR | DFlag.DIST_MONITOR_NAME


def expand(flags: int) -> int:
    """A peer that sets MANDATORY_25_DIGEST has every OTP 25 mandatory flag."""
    if flags & DFlag.MANDATORY_25_DIGEST:
        flags |= MANDATORY_25
    return flags


def describe(flags: int) -> str:
    names = [flag.name or hex(flag.value) for flag in DFlag if flags & flag]
    return "|".join(names) or "0"
