"""`relctl`, the thin client of relctl agents (run it as `relctl` or `python -m agent.client`).

``main`` registers the commands of ``commands/`` and owns the exit status; the shared modules
are ``common`` (settings, options, asking agents), ``status`` (exit codes and their mappings),
``channel`` (reaching an agent), ``output``, ``transfer`` (uploads, progress), ``fleet``
(rollouts over several agents), ``watch`` (a rollout's silent agents, read back once they
answer), ``prestage`` and ``inventory``. `make-relup` and `make-appup` run the build tool,
:mod:`agent.build`, loaded only when they run. Besides that and :mod:`agent.relfile` it imports
no other agent package, and never ``bridge``: the client is the stubs, grpc and click.
"""
