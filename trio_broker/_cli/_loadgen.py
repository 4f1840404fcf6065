"""The bench's load generator: one process, one thread, one epoll loop, raw frames.

``python -m trio_broker bench`` starts one of these per core for each workload. It measures the
brokers, not itself: every request is a frame encoded once before the run (4-byte length, JSON
object: docs/protocol.md's framing), answers are classified by looking at their bytes (no JSON
decoding on the hot path), and the loop's own CPU time is reported so the bench can print it
next to the brokers'. Standard library and orjson only: no trio, no trio_broker imports.

At one request in flight an answer costs the generator its system calls more than its Python,
so it makes as few as it can: every receive goes into one buffer allocated once (a fresh
256 KiB ``recv`` was an ``mmap``, an ``mremap`` and a ``munmap`` per answer), one
``epoll_wait`` serves every socket ready, and a lone connection waits in its ``recv`` itself,
with no ``epoll`` at all.

Input: one JSON object on stdin (see :func:`main`). Output: one JSON object on stdout with the
counts, the latencies in microseconds, the measured window and the loop's CPU seconds. Progress
goes to stderr once a second. Bounded: ``seconds`` of load, then at most ``drain_seconds`` to
collect the answers still in flight; a connection the broker closes ends that connection only.
"""

from __future__ import annotations

import collections
import random
import resource
import select
import socket
import struct
import sys
import time
from typing import Any

import orjson

HEADER = 4
length = struct.Struct(">I").unpack_from
RECEIVE = 1 << 18
ROOM = 1 << 16
"""Bytes a receive has room for at least, after a frame not yet whole (else a larger buffer)."""
SUCCESS = b'"status":"success"'
SEQUENCE = b'"sequence_num"'
READ = select.EPOLLIN
WRITE = select.EPOLLOUT
WAIT = 0.2
"""Seconds a wait for answers lasts at most (then the deadlines are checked)."""
BASE36 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def frame(request: dict[str, Any]) -> bytes:
    body = orjson.dumps(request)
    return len(body).to_bytes(HEADER, "big") + body


class _Conn:
    __slots__ = ("client", "frame", "inbox", "outbox", "rotations", "sent", "sock", "template")

    def __init__(self, sock: socket.socket, template: dict[str, Any], client: str | None) -> None:
        self.sock = sock
        self.template = template
        self.client = client
        self.rotations = 0
        self.frame = frame(self._request())
        self.inbox: bytes | bytearray = b""
        """The start of a frame not yet whole, kept from the last receive."""
        self.outbox = b""
        self.sent: collections.deque[float] = collections.deque()

    def _request(self) -> dict[str, Any]:
        if self.client is None:
            return self.template
        return self.template | {"client_id": self.client}

    def rotate(self) -> None:
        """A reader that read everything starts over as a new client (its own position)."""
        assert self.client is not None
        self.rotations += 1
        self.client = self.client[:3] + "".join(random.choices(BASE36, k=4))
        self.frame = frame(self._request())


def run(spec: dict[str, Any]) -> dict[str, Any]:
    host, port = spec["host"], spec["port"]
    window = spec["window"]
    items_mode = spec.get("items", "one")  # one | batch_append | read | batch_read
    batch = spec.get("batch", 1)
    template = spec["request"]
    clients = spec.get("clients")  # one client id per connection, for reads
    poller = select.epoll()
    buffer = bytearray(RECEIVE)
    view = memoryview(buffer)
    conns: list[_Conn] = []
    by_fd: dict[int, _Conn] = {}
    for i in range(spec["connections"]):
        sock = socket.create_connection((host, port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        conn = _Conn(sock, template, clients[i] if clients else None)
        conns.append(conn)
        by_fd[sock.fileno()] = conn
        poller.register(sock.fileno(), READ)

    # A lone connection needs no epoll: its receive itself waits (a kernel timeout keeps the
    # loop bounded), one system call fewer per answer.
    lone: list[tuple[int, int]] = []
    lone_writing: list[tuple[int, int]] = []
    if len(conns) == 1:
        sock = conns[0].sock
        sock.setblocking(True)
        timeval = struct.pack("ll", 0, int(WAIT * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        lone = [(sock.fileno(), READ)]
        lone_writing = [(sock.fileno(), READ | WRITE)]

    ok = errors = items = 0
    latencies: list[int] = []
    record = latencies.append
    start_at = spec.get("start_at", 0.0)
    while (delay := start_at - time.time()) > 0:
        time.sleep(min(delay, 0.5))
    cpu0 = time.process_time()
    usage0 = resource.getrusage(resource.RUSAGE_SELF)  # finer than os.times()' ticks
    start = now = time.perf_counter()
    stop = start + spec["seconds"]
    give_up = stop + spec.get("drain_seconds", 10.0)
    next_report, last_items = start + 1.0, 0
    in_flight = 0
    waits = ready = 0
    stopping = False
    closed = 0
    poll = poller.poll
    clock = time.perf_counter

    def send(conn: _Conn, count: int) -> None:
        """Send ``count`` more requests, after what the socket did not take yet."""
        nonlocal in_flight
        conn.sent.extend([now] * count)
        in_flight += count
        backlog = conn.outbox
        data = backlog + conn.frame * count
        try:
            n = conn.sock.send(data)
        except BlockingIOError:
            n = 0
        conn.outbox = data[n:]
        if conn.outbox and not backlog:
            poller.modify(conn.sock.fileno(), READ | WRITE)

    for conn in conns:
        send(conn, window)
    last_answer = start
    while in_flight and closed < len(conns):
        if not lone:
            events = poll(WAIT)
        else:
            events = lone_writing if conns[0].outbox else lone
        waits += 1
        ready += len(events)
        now = clock()
        if not stopping and now >= stop:
            stopping = True
        if stopping and now >= give_up:
            break
        for fd, mask in events:
            conn = by_fd[fd]
            if mask & WRITE:
                try:
                    n = conn.sock.send(conn.outbox)
                except BlockingIOError:
                    n = 0
                conn.outbox = conn.outbox[n:]
                if not conn.outbox:
                    poller.modify(fd, READ)
                if not mask & ~WRITE:
                    continue
            # Into the one preallocated buffer, after what the connection kept of a frame
            # not yet whole: a fresh 256 KiB ``recv`` is an mmap, an mremap and a munmap.
            kept = len(conn.inbox)
            if kept and kept + ROOM > len(buffer):
                view.release()
                buffer = bytearray(kept + RECEIVE)
                view = memoryview(buffer)
            try:
                if kept:
                    buffer[:kept] = conn.inbox
                    received = conn.sock.recv_into(view[kept:])
                else:
                    received = conn.sock.recv_into(view)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                received = 0
            if not received:
                poller.unregister(fd)
                conn.sock.close()
                closed += 1
                errors += len(conn.sent)
                in_flight -= len(conn.sent)
                conn.sent.clear()
                continue
            if lone:
                now = clock()  # its wait was the receive: the answer came just now
            inbox = buffer
            sent = conn.sent
            pos, size, answered, rotate = 0, kept + received, 0, False
            while size - pos >= HEADER:
                end = pos + HEADER + length(inbox, pos)[0]
                if end > size:
                    break
                body, pos = pos + HEADER, end
                answered += 1
                record(int((now - sent.popleft()) * 1e6))
                if inbox.find(SUCCESS, body, end) < 0:
                    errors += 1
                    continue
                ok += 1
                if items_mode == "one":
                    items += 1
                elif items_mode == "batch_append":
                    items += batch
                else:
                    got = inbox.count(SEQUENCE, body, end)
                    items += got
                    rotate = rotate or got == 0
            conn.inbox = inbox[pos:size] if pos < size else b""
            if answered:
                in_flight -= answered
                last_answer = now
                if rotate and conn.client is not None:
                    conn.rotate()
                if stopping:
                    pass
                elif answered == 1 and not conn.outbox:
                    # The usual case at one request in flight: one frame, nothing waiting.
                    sent.append(now)
                    in_flight += 1
                    try:
                        n = conn.sock.send(conn.frame)
                    except BlockingIOError:
                        n = 0
                    if n < len(conn.frame):
                        conn.outbox = conn.frame[n:]
                        poller.modify(fd, READ | WRITE)
                else:
                    send(conn, answered)
        if now >= next_report:
            print(
                f"    {now - start:4.0f} s  {items - last_items:>9,}/s  {errors} errors",
                file=sys.stderr,
                flush=True,
            )
            next_report, last_items = now + 1.0, items
    cpu = time.process_time() - cpu0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    answers = ok + errors
    print(
        f"    generator: {answers:,} answers, {waits / max(answers, 1):.2f} waits and"
        f" {ready / max(answers, 1):.2f} ready sockets per answer;"
        f" CPU {(usage.ru_utime - usage0.ru_utime) * 1e6 / max(answers, 1):.1f} µs user"
        f" + {(usage.ru_stime - usage0.ru_stime) * 1e6 / max(answers, 1):.1f} µs system per answer",
        file=sys.stderr,
        flush=True,
    )
    poller.close()
    for conn in conns:
        conn.sock.close()
    return {
        "ok": ok,
        "errors": errors,
        "items": items,
        "unanswered": in_flight,
        "elapsed": max(last_answer - start, 1e-9),
        "cpu": cpu,
        "latencies_us": latencies,
    }


def main() -> int:
    """Read the workload spec (JSON) on stdin; write the result (JSON) on stdout.

    Spec fields: ``host``, ``port``, ``connections``, ``window`` (requests in flight on each),
    ``seconds``, ``request`` (the request object), optionally ``clients`` (one client id per
    connection, set on its request), ``items`` (``one``, ``batch_append`` with ``batch``,
    ``read``, ``batch_read``: what an answer counts as), ``start_at`` (a ``time.time()`` to
    start at, so that several generators start together) and ``drain_seconds``.
    """
    spec = orjson.loads(sys.stdin.buffer.read())
    sys.stdout.buffer.write(orjson.dumps(run(spec)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
