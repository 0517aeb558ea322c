"""`python -m agent` runs the agent daemon (the same as `relctl-agent`)."""

from agent.daemon.main import main

raise SystemExit(main())
