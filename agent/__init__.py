"""relctl's on-host agent (`relctl-agent`) and its thin remote client (`relctl`, in
agent/client/)."""

import os

__version__ = "0.1.0"

# grpc's C core logs its own INFO lines (handshake failures, GOAWAYs) on stderr; relctl and the
# agent say what matters in their own words. Set GRPC_VERBOSITY to see grpc's lines again.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
