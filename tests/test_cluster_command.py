"""`python -m trio_broker cluster`: a local cluster for trying things out."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

import trio

from .wire import call


def consecutive_free_ports(count: int) -> int:
    for base in range(20000, 60000, 97):
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
