"""relctl's on-host agent (`relctl-agent`) and its thin remote client (`relctl`, in cli.py)."""

__version__ = "0.1.0"
