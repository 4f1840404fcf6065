"""`python -m trio_broker cluster`: a local cluster for trying things out."""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys

import trio

from .wire import call


def consecutive_free_ports(count: int) -> int:
    # (bases tried in a random order: two runs of the suite at once on one machine would
    # otherwise both find the first base free and race for it)
    for base in random.sample(range(20000, 60000, 97), k=len(range(20000, 60000, 97))):
        sockets = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no free ports")


async def test_cluster_command_starts_three_brokers_and_stops_them(tmp_path):
    base = consecutive_free_ports(3)
    cmd = [
        sys.executable,
        "-m",
        "trio_broker",
        "cluster",
        "--nodes",
        "3",
        "--base-port",
        str(base),
        "--data-dir",
        str(tmp_path / "c"),
    ]
    process = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE)
    try:
        output = b""
        with trio.fail_after(60):
            while b"Ctrl-C stops it" not in output:
                chunk = await process.stdout.receive_some(4096)
                assert chunk, f"cluster exited: {output!r}"
                output += chunk
        lines = output.decode().splitlines()
        assert sum("listening on 127.0.0.1:" in line for line in lines) == 3
        with trio.fail_after(30):
            while True:
                view = await call(base + 2, {"operation": "CLUSTER_QUERY"})
                if len(view["brokers"]) == 3 and view.get("leader_id"):
                    break
                await trio.sleep(0.1)
        assert sorted(b["port"] for b in view["brokers"]) == [base, base + 1, base + 2]
        process.send_signal(signal.SIGINT)
        with trio.fail_after(30):
            assert await process.wait() == 0
        for port in (base, base + 1, base + 2):  # every broker was stopped
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", port)) != 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


class Output:
    """A process's stdout and stderr, read as they come (so neither pipe can fill up)."""

    def __init__(self) -> None:
        self.text = {"stdout": "", "stderr": ""}
        self._changed = trio.Event()

    async def pump(self, name: str, stream: trio.abc.ReceiveStream) -> None:
        while chunk := await stream.receive_some(4096):
            self.text[name] += chunk.decode()
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, pattern: str, name: str = "stdout", start: int = 0) -> re.Match:
        """The first match of ``pattern`` in the stream's text after ``start``."""
        while (found := re.compile(pattern).search(self.text[name], start)) is None:
            await self._changed.wait()
        return found


FAST_ENV = {"TRIO_BROKER_HEARTBEAT_INTERVAL": "0.05", "TRIO_BROKER_FAILURE_TIMEOUT": "0.5"}
"""The process tests' fast failure detection (tests/test_cluster_process.py's ``FAST``), as
the environment the command's brokers inherit (each setting's variable): joins, promotions,
placement and leadership moves, paced by the heartbeat and failure timeout, take a fraction
of the default's 0.2 s and 1.5 s."""


@contextlib.asynccontextmanager
async def running_cluster(tmp_path, nodes: int, *extra: str):
    base = consecutive_free_ports(nodes)
    cmd = [sys.executable, "-m", "trio_broker", "cluster", "--nodes", str(nodes)]
    cmd += ["--base-port", str(base), "--data-dir", str(tmp_path / "c"), *extra]
    process = await trio.lowlevel.open_process(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **FAST_ENV}
    )
    output = Output()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(output.pump, "stdout", process.stdout)
            nursery.start_soon(output.pump, "stderr", process.stderr)
            with trio.fail_after(60):
                await output.wait_for("Ctrl-C stops it")
            yield process, output, base
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        # The brokers of a cluster command killed above would outlive it: reap them too.
        for pid in re.findall(r"node-\d+ pid (\d+):", output.text["stdout"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


async def test_cluster_command_restarts_a_broker_that_died(tmp_path):
    async with running_cluster(tmp_path, 2, "--restart") as (process, output, base):
        with trio.fail_after(60):
            first = await output.wait_for(r"node-2 pid (\d+): trio_broker node (B-\w+) ")
            pid, broker_id = int(first[1]), first[2]
            os.kill(pid, signal.SIGKILL)
            report = await output.wait_for(
                r"error: node-2 \(pid (\d+), port (\d+)\) exited: (.*)", "stderr"
            )
            assert (int(report[1]), int(report[2]), report[3]) == (
                pid,
                base + 1,
                "killed by SIGKILL",
            )
            await output.wait_for("restarting node-2", "stderr")
            again = await output.wait_for(
                r"node-2 pid (\d+): trio_broker node (B-\w+) .*listening on 127.0.0.1:(\d+)",
                start=first.end(),
            )
            assert int(again[1]) != pid
            assert (again[2], int(again[3])) == (broker_id, base + 1)  # same identity, port
            # Back in its cluster once it hears from the leader (polling another process).
            while len((await call(base + 1, {"operation": "CLUSTER_QUERY"}))["brokers"]) < 2:  # noqa: ASYNC110
                await trio.sleep(0.1)
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 0
        assert "every broker has exited" not in output.text["stderr"]


async def test_cluster_command_reports_a_dead_broker_and_exits_1_when_none_is_left(tmp_path):
    async with running_cluster(tmp_path, 1) as (process, output, base):
        with trio.fail_after(60):
            first = await output.wait_for(r"node-1 pid (\d+): ")
            pid = int(first[1])
            os.kill(pid, signal.SIGTERM)  # a clean exit is still an exit the operator must see
            await output.wait_for(
                rf"error: node-1 \(pid {pid}, port {base}\) exited: status 0", "stderr"
            )
            await output.wait_for("every broker has exited", "stderr")
            assert await process.wait() == 1
        assert "restarting" not in output.text["stderr"]
