"""The click commands of `relctl`, one module per group of commands. They never import each other
or ``agent.client.main``, which registers them; shared code is in the modules of
``agent.client``."""
