"""The bench's load generator counts every answer once and checks each as before, whatever
pieces the answers arrive in, honours its in-flight window, and counts what never came back;
with one connection (no epoll) as with several, and receiving into its own buffer."""

from __future__ import annotations

import select
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from trio_broker._cli import _loadgen

SUCCESS = b'{"status":"success","sequence_num":7}'
ERROR = b'{"status":"error","message":"no","code":"UNAVAILABLE"}'
WRONG = b'{"status":"succes","sequence_num":7}'  # not the success envelope: an error


def _frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


class _Server:
    """Answers each request frame of each connection with ``answer(connection, request)``'s
    body (``None``: no answer, ever), written in ``pieces`` bytes at a time (0: at once).
    Records how many requests each connection had unanswered at most."""

    def __init__(self, answer: Callable[[int, int], bytes | None], pieces: int = 0) -> None:
        self.answer = answer
        self.pieces = pieces
        self.most_unanswered: dict[int, int] = {}
        self.requests: dict[int, int] = {}
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        self.listener.settimeout(0.01)
        conns: list[socket.socket] = []
        buffers: dict[int, bytearray] = {}
        unanswered: dict[int, int] = {}
        while not self.stop.is_set():
            try:
                sock, _ = self.listener.accept()
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                buffers[len(conns)] = bytearray()
                unanswered[len(conns)] = 0
                self.requests[len(conns)] = 0
                self.most_unanswered[len(conns)] = 0
                conns.append(sock)
            except TimeoutError:
                pass
            if not conns:
                continue
            readable, _, _ = select.select(conns, [], [], 0.01)
            for sock in readable:
                index = conns.index(sock)
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    continue
                buf = buffers[index]
                buf += data
                out: list[bytes] = []
                while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
                    del buf[: 4 + int.from_bytes(buf[:4], "big")]
                    self.requests[index] += 1
                    unanswered[index] += 1
                    self.most_unanswered[index] = max(
                        self.most_unanswered[index], unanswered[index]
                    )
                    body = self.answer(index, self.requests[index])
                    if body is not None:
                        out.append(_frame(body))
                        unanswered[index] -= 1
                self._write(sock, b"".join(out))
        for sock in conns:
            sock.close()

    def _write(self, sock: socket.socket, data: bytes) -> None:
        if not self.pieces:
            sock.sendall(data)
            return
        for at in range(0, len(data), self.pieces):
            sock.sendall(data[at : at + self.pieces])
            time.sleep(0.0002)  # lets the generator read a piece alone

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        self.listener.close()


def _run(server: _Server, **spec: Any) -> dict[str, Any]:
    return _loadgen.run(
        {
            "host": "127.0.0.1",
            "port": server.port,
            "seconds": 0.3,
            "drain_seconds": 0.5,
            "request": {"operation": "APPEND", "data": "x"},
        }
        | spec
    )


@pytest.fixture(params=[1, 3], ids=["one connection", "three connections"])
def connections(request: pytest.FixtureRequest) -> Iterator[int]:
    yield request.param


def _every_third_wrong(conn: int, n: int) -> bytes:
    return (SUCCESS, ERROR, WRONG)[(n - 1) % 3]


@pytest.mark.parametrize("pieces", [0, 3, 11], ids=["whole", "3-byte pieces", "11-byte pieces"])
def test_every_answer_is_counted_once_and_checked(connections: int, pieces: int) -> None:
    with _Server(_every_third_wrong, pieces=pieces) as server:
        result = _run(server, connections=connections, window=2)
    answered = result["ok"] + result["errors"]
    assert result["unanswered"] == 0
    assert answered == sum(server.requests.values()) == len(result["latencies_us"]) > 0
    assert all(latency >= 0 for latency in result["latencies_us"])
    # per connection, answers 1, 4, 7, ... succeed (n % 3 == 1): a third, rounded up or down
    expected_ok = sum((n + 2) // 3 for n in server.requests.values())
    assert result["ok"] == expected_ok == result["items"]
    assert result["errors"] == answered - expected_ok


def test_the_in_flight_window_is_honoured(connections: int) -> None:
    # The first 4 requests of each connection are answered, then none: the generator sends
    # 3 (its window), 1 more for each answer, and nothing more while 3 are unanswered.
    with _Server(lambda c, n: None if n > 4 else SUCCESS) as server:
        result = _run(server, connections=connections, window=3)
    assert server.most_unanswered == dict.fromkeys(range(connections), 3)
    assert server.requests == dict.fromkeys(range(connections), 4 + 3)
    assert result["ok"] == 4 * connections
    assert result["unanswered"] == 3 * connections
    assert result["errors"] == 0


def test_a_connection_the_server_closes_counts_its_requests_as_errors(connections: int) -> None:
    closing = socket.create_server(("127.0.0.1", 0))
    port = closing.getsockname()[1]

    def close_all() -> None:
        closing.settimeout(5)
        for _ in range(connections):
            with closing.accept()[0] as sock:
                sock.recv(65536)  # the window's requests, then the connection closes

    thread = threading.Thread(target=close_all, daemon=True)
    thread.start()
    try:
        result = _loadgen.run(
            {
                "host": "127.0.0.1",
                "port": port,
                "connections": connections,
                "window": 2,
                "seconds": 0.3,
                "drain_seconds": 0.5,
                "request": {"operation": "APPEND"},
            }
        )
    finally:
        thread.join(5)
        closing.close()
    assert result["ok"] == 0
    assert result["errors"] == 2 * connections
    assert result["unanswered"] == 0


def test_an_answer_longer_than_the_buffer_is_received_whole(
    monkeypatch: pytest.MonkeyPatch, connections: int
) -> None:
    monkeypatch.setattr(_loadgen, "RECEIVE", 64)
    monkeypatch.setattr(_loadgen, "ROOM", 16)
    long = b'{"status":"success","messages":[' + b",".join([b'{"sequence_num":1}'] * 40) + b"]}"

    with _Server(lambda c, n: long if n % 2 else ERROR, pieces=50) as server:
        result = _run(server, connections=connections, window=2, items="read")
    answered = result["ok"] + result["errors"]
    assert answered == sum(server.requests.values()) > 0
    assert result["unanswered"] == 0
    assert result["ok"] == sum((n + 1) // 2 for n in server.requests.values())
    assert result["items"] == 40 * result["ok"]


def test_answers_are_received_into_the_generators_own_buffer(
    monkeypatch: pytest.MonkeyPatch, connections: int
) -> None:
    # A recv() allocates a fresh buffer for each answer (256 KiB: an mmap, an mremap and a
    # munmap); the generator receives into one buffer it allocated once.
    class NoFreshBuffer(socket.socket):
        def recv(self, *args: Any) -> bytes:
            raise AssertionError("recv() allocates a buffer per receive")

    connect = socket.create_connection

    def create_connection(*args: Any, **kwargs: Any) -> socket.socket:
        plain = connect(*args, **kwargs)
        return NoFreshBuffer(plain.family, plain.type, plain.proto, fileno=plain.detach())

    monkeypatch.setattr(_loadgen.socket, "create_connection", create_connection)
    with _Server(lambda c, n: SUCCESS) as server:
        result = _run(server, connections=connections, window=2)
    assert result["ok"] == sum(server.requests.values()) > 0


def test_a_lone_connection_waits_in_its_receive_not_in_epoll(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[object] = []
    real = select.epoll

    class CountedEpoll:
        def __init__(self, *args: Any) -> None:
            self.poller = real(*args)

        def poll(self, *args: Any) -> list[tuple[int, int]]:
            waits.append(args)
            return self.poller.poll(*args)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.poller, name)

    monkeypatch.setattr(select, "epoll", CountedEpoll)
    monkeypatch.setattr(selectors.EpollSelector, "_selector_cls", CountedEpoll)
    with _Server(lambda c, n: SUCCESS) as server:
        result = _run(server, connections=1, window=1)
    assert result["ok"] == server.requests[0] > 0
    assert waits == []


def test_a_latency_runs_from_the_request_to_its_answer(connections: int) -> None:
    # Each answer is written 5 ms after its request arrived: no latency can be shorter
    # (a lower bound the server's sleep guarantees, whatever the machine's speed). A clock
    # read before the wait, not after it, gave a lone connection latencies of microseconds.
    def late(conn: int, n: int) -> bytes:
        time.sleep(0.005)
        return SUCCESS

    with _Server(late) as server:
        result = _run(server, connections=connections, window=1)
    assert len(result["latencies_us"]) == result["ok"] == sum(server.requests.values()) > 0
    assert min(result["latencies_us"]) >= 5_000
