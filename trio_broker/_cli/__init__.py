"""The command line: ``python -m trio_broker`` and the ``trio-broker`` console script.

One module per command: ``_node`` (run a broker; its settings and parser in ``_node_options``),
``_client`` (talk to brokers; its parser in ``_client_args``, ``_reach`` asks every seed at
once), ``_cluster`` (a supervised local cluster, its parser in ``_cluster_args``, its processes
in ``_processes``), ``_backup`` (backup and restore), ``_data`` and ``_bench`` (the benchmarks,
their parser in ``_bench_args``, their load generator in ``_loadgen``). Seeds are parsed in
``_seeds`` and exit statuses are defined in ``_exit``, for every command alike.

``_main`` builds the parser from the parser modules alone and imports a command's own modules
when it runs: ``node`` does not import the client, nor a client command the broker.
"""

from ._main import build_parser, main

__all__ = ["build_parser", "main"]
