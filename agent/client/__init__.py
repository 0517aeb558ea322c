"""`relctl`, the thin client of relctl agents (run it as `relctl` or `python -m agent.client`).

``main`` registers the commands and owns the exit status; ``fastpath`` reads the plain forms of
`versions`, `upgrade` and `downgrade` without click, ``cli`` (the click group), ``options``
(the shared click options) and ``commands/`` (one click command each) read the rest. What the
commands do: ``views`` (read-only: versions, nodes, ping) and ``operate`` (the operations),
over the shared modules ``common`` (settings, asking agents, what a failed call means),
``status`` (exit codes and every rule that picks one), ``channel`` (reaching an agent),
``output`` (the only module that prints), ``transfer`` (uploads, following an operation),
``fleet`` (rollouts over several agents), ``prestage`` (their staging phase), ``watch`` (a
rollout's silent agents, read back once they answer), ``workers`` (the daemon threads of both)
and ``inventory``. `make-relup` and `make-appup` run the build tool, :mod:`agent.build`, loaded
only when they run. Besides that and :mod:`agent.relfile` it imports no other agent package, and
never ``bridge``: the client is the stubs, grpc and click.
"""
