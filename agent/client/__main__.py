"""`python -m agent.client` runs `relctl`."""

import sys

from agent.client.main import main

sys.exit(main())
