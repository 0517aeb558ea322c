"""`python -m agent` runs the agent daemon (the same as `relctl-agent`)."""

from agent.daemon.app import main

raise SystemExit(main())
