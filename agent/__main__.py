"""`python -m agent` runs the agent daemon (the same as `relctl-agent`)."""

from .daemon import main

raise SystemExit(main())
