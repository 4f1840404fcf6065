"""What ``python -m trio_broker node`` costs before it serves: ``python -m benchmarks.cli_startup
TREE_A TREE_B``.

Each tree is an export of the project (``git archive COMMIT | tar -x -C DIR``), put first on
``PYTHONPATH``; run it from outside any checkout. Rounds alternate A and B; each prints, per
tree, the median of ``--reps`` processes of:

- help: ``node --help`` run as ``-m`` runs it (``runpy``), the main thread's CPU at exit
  (``time.thread_time``: another process's load does not count) and the modules imported;
- listen: a ``node`` on a fresh data directory and a free port, the main thread's CPU when it
  prints its "listening on" line (``/proc/PID/task/PID/stat``, 10 ms ticks) and the wall time.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HELP_PROBE = (
    "import sys, time, runpy\n"
    "sys.argv = ['trio_broker', 'node', '--help']\n"
    "try:\n"
    "    runpy.run_module('trio_broker', run_name='__main__', alter_sys=True)\n"
    "except SystemExit:\n"
    "    pass\n"
    "print(time.thread_time(), len(sys.modules), file=sys.stderr)\n"
)


def _env(tree: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=tree)


def help_cost(tree: str) -> tuple[float, int]:
    out = subprocess.run(
        [sys.executable, "-c", HELP_PROBE], env=_env(tree), capture_output=True, text=True
    )
    cpu, modules = out.stderr.split()[-2:]
    return float(cpu), int(modules)


def listen_cost(tree: str) -> tuple[float, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as data:
        start = time.perf_counter()
        command = ["node", "--port", str(port), "--data-dir", data, "--log-level", "WARNING"]
        node = subprocess.Popen(
            [sys.executable, "-m", "trio_broker", *command],
            env=_env(tree),
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert node.stdout is not None
            for line in node.stdout:
                if "listening on" in line:
                    break
            wall = time.perf_counter() - start
            with open(f"/proc/{node.pid}/task/{node.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        finally:
            node.send_signal(signal.SIGTERM)
            node.wait(10)
        return cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="+", help="exports of the project to compare")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=9)
    args = parser.parse_args()
    for r in range(args.rounds):
        for tree in args.trees:
            helps = [help_cost(tree) for _ in range(args.reps)]
            listens = [listen_cost(tree) for _ in range(args.reps)]
            print(
                f"round {r + 1} {tree}: help cpu "
                f"{statistics.median(c for c, _ in helps) * 1000:.0f} ms, "
                f"{helps[0][1]} modules | listen cpu "
                f"{statistics.median(c for c, _ in listens) * 1000:.0f} ms, wall "
                f"{statistics.median(w for _, w in listens) * 1000:.0f} ms",
                flush=True,
            )


if __name__ == "__main__":
    main()
