"""The release engine: every operation on one node's releases (upgrade, downgrade, the single
steps, config reload), each a declared flow of steps (flows.py) over a small call protocol
(``Caller``), with one undo (staging.py, run by ``base.guarded``) and the checks that refuse
before anything changes (preflight.py, ertscheck.py, inuse.py).

It may not know gRPC, Prometheus, SQLite or sockets: it talks to the node through ``Caller``,
reports steps to a callback, and keeps what must outlive an operation through the
``UnpackLedger`` its caller gives it (the journal, in agent.operations). The tarball's checks
and the agent's own extraction live in the tarballs/ sub-room.
"""
