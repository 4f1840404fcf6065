"""The leader's request path as on a broker of several groups, where every lone APPEND the
poller decodes is handed to its connection's task (``handle_lone`` answers None: the host
routes it through ``handle_many``): server CPU per APPEND at one request in flight.

    python -m benchmarks.peerpoll_several [--rounds N] [--connections C] [--requests N]

:mod:`benchmarks.connection_path` with ``Runs.lone_append`` answering None, as
``Broker._handle_lone`` does when its host holds several groups. Run it on two trees
(``PYTHONPATH``) to compare them.
"""

from __future__ import annotations

import argparse
import gc
from typing import Any

import trio

from benchmarks import connection_path
from trio_broker._cli._node import GC_THRESHOLDS
from trio_broker._runtime._runs import Runs


def _refuse(self: Any, request: Any) -> None:
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--requests", type=int, default=1000, help="per connection")
    args = parser.parse_args()
    gc.set_threshold(*GC_THRESHOLDS)
    Runs.lone_append = _refuse  # type: ignore[assignment,method-assign]
    runs = [
        trio.run(connection_path._run, args.connections, 1, args.requests)
        for _ in range(args.rounds)
    ]
    print(
        f"{args.connections} connections x 1, lone APPENDs refused by handle_lone: "
        f"{min(runs):.2f} us of server CPU per APPEND (best of {args.rounds}; all: "
        f"{', '.join(f'{r:.2f}' for r in runs)})"
    )


if __name__ == "__main__":
    main()
