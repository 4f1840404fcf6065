"""The command line: ``python -m trio_broker`` and the ``trio-broker`` console script.

One module per command: ``_node`` (run a broker; its settings in ``_node_options``),
``_client`` (talk to brokers; ``_reach`` asks every seed at once), ``_cluster`` (a supervised
local cluster, its processes in ``_processes``), ``_backup`` (backup and restore) and
``_bench`` (the benchmarks, their load generator in ``_loadgen``). Seeds are parsed in
``_seeds`` and exit statuses are defined in ``_exit``, for every command alike.
"""

from ._main import build_parser, main

__all__ = ["build_parser", "main"]
