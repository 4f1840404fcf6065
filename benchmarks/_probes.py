"""What the probing benchmarks share: the events recorded inside a broker process, the probes
both of them install there, and the start, stop and read-back of three probed brokers.

A probed broker is started as ``python -m <benchmark> node TRACE ARGS...``: the benchmark
installs its probes, then runs the broker's own ``node`` command; the broker's code carries
none. Every event is ``(time.monotonic_ns, name, detail, time.thread_time_ns)``, kept in
``EVENTS`` and pickled to ``TRACE`` when the process exits.
"""

from __future__ import annotations

import atexit
import json
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

EVENTS: list[tuple[int, str, int, int]] = []

Node = tuple[subprocess.Popen[str], Path]
"""A probed broker process and the file its events are written to."""


def record(name: str, detail: int) -> None:
    EVENTS.append((time.monotonic_ns(), name, detail, time.thread_time_ns()))


def dump_at_exit(trace: str) -> None:
    def dump() -> None:
        with open(trace, "wb") as f:
            pickle.dump(EVENTS, f)

    atexit.register(dump)


def trace_loop() -> None:
    """The event loop's waits for I/O: ``wake`` when it returns from ``epoll_wait``, ``idle``
    when it enters it (a trio ``Instrument`` added when the node starts)."""
    import trio

    from trio_broker._cli import _node

    class Loop(trio.abc.Instrument):
        def before_io_wait(self, timeout: float) -> None:
            record("idle", 0)

        def after_io_wait(self, timeout: float) -> None:
            record("wake", 0)

    run_node = _node._run_node

    async def traced_run_node(config: Any) -> None:
        trio.lowlevel.add_instrument(Loop())
        await run_node(config)

    _node._run_node = traced_run_node  # type: ignore[assignment]


def trace_commits() -> None:
    """``commit`` (detail: the new commit index) after each ``RaftNode.step`` or ``advance``
    that moved it."""
    from trio_broker._core import _raft

    advance = _raft.RaftNode.advance
    node_step = _raft.RaftNode.step

    def traced_advance(self: Any) -> None:
        commit = self.commit
        advance(self)
        if self.commit != commit:
            record("commit", self.commit)

    def traced_node_step(self: Any, message: Any) -> None:
        commit = self.commit
        node_step(self, message)
        if self.commit != commit:
            record("commit", self.commit)

    _raft.RaftNode.advance = traced_advance  # type: ignore[method-assign]
    _raft.RaftNode.step = traced_node_step  # type: ignore[method-assign]


def node_main(install: Callable[[str], None], argv: list[str]) -> int:
    """``node TRACE ARGS...``: the broker's ``node`` command with ``install(TRACE)`` done."""
    trace, args = argv[0], argv[1:]
    install(trace)
    from trio_broker._cli import main

    return main(["node", *args])


def start(module: str, base: Path, port: int, seed: int | None) -> Node:
    """Start ``python -m module node ...`` on ``port`` (joining ``seed``'s cluster if given)
    and wait for its ready line."""
    trace = base / f"trace-{port}.pickle"
    cmd = [sys.executable, "-m", module, "node", str(trace)]
    cmd += ["--port", str(port), "--data-dir", str(base / f"node-{port}")]
    cmd += ["--log-level", "WARNING"]
    if seed is not None:
        cmd += ["--seed", f"127.0.0.1:{seed}"]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    process.stdout.readline()  # (its ready line)
    return process, trace


def start_cluster(module: str, base: Path, ports: list[int]) -> list[Node]:
    nodes = [start(module, base, ports[0], None)]
    nodes += [start(module, base, p, ports[0]) for p in ports[1:]]
    return nodes


def stop(nodes: list[Node]) -> None:
    """SIGTERM each (so that each writes its events), then wait; kill one that hangs."""
    for process, _ in nodes:
        process.send_signal(signal.SIGTERM)
    for process, _ in nodes:
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


def read(trace: Path) -> list[tuple[int, str, int, int]]:
    """A stopped broker's events, in time order."""
    with open(trace, "rb") as f:
        events: list[tuple[int, str, int, int]] = pickle.load(f)
    events.sort()
    return events


def call(sock: socket.socket, obj: Any, buf: bytearray) -> dict[str, Any]:
    """One request and its answer on a plain blocking socket (``buf``: bytes read ahead)."""
    payload = json.dumps(obj).encode()
    sock.sendall(struct.pack(">I", len(payload)) + payload)
    while True:
        if len(buf) >= 4:
            (n,) = struct.unpack(">I", buf[:4])
            if len(buf) >= 4 + n:
                answer = json.loads(bytes(buf[4 : 4 + n]))
                del buf[: 4 + n]
                return answer  # type: ignore[no-any-return]
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("the broker closed the connection")
        buf += data


def leader(ports: list[int]) -> tuple[int, str]:
    """The port of the broker that creates a queue (the leader) and that queue's id."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for port in ports:
            try:
                with socket.create_connection(("127.0.0.1", port)) as sock:
                    answer = call(sock, {"operation": "CREATE_QUEUE"}, bytearray())
            except OSError:
                continue
            if answer.get("status") == "success":
                return port, answer["queue_id"]
        time.sleep(0.2)
    raise RuntimeError("no leader within 30 s")
