"""The bench's load generator counts what the server answered, and nothing else."""

from __future__ import annotations

import socket
import threading

import orjson

from trio_broker._cli import _loadgen


def _serve(listener: socket.socket, stop: threading.Event) -> None:
    """Answer every frame in order: every 5th with the error envelope, READs of client
    C-R0001 with "no_messages", everything else with a message."""
    listener.settimeout(0.05)
    conns: list[socket.socket] = []
    count = 0
    buffers: dict[socket.socket, bytearray] = {}
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
            conn.settimeout(0.01)
            conns.append(conn)
            buffers[conn] = bytearray()
        except TimeoutError:
            pass
        for conn in conns:
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                continue
            buf = buffers[conn]
            buf += data
            out = b""
            while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
                size = int.from_bytes(buf[:4], "big")
                request = orjson.loads(bytes(buf[4 : 4 + size]))
                del buf[: 4 + size]
                count += 1
                if count % 5 == 0:
                    answer = {"status": "error", "message": "no", "code": "UNAVAILABLE"}
                elif request.get("client_id") == "C-R0001":
                    answer = {"status": "success", "message": "no_messages"}
                else:
                    answer = {"status": "success", "sequence_num": count, "data": "x"}
                body = orjson.dumps(answer)
                out += len(body).to_bytes(4, "big") + body
            if out:
                conn.sendall(out)
    for conn in conns:
        conn.close()


def _run(spec: dict) -> dict:
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    thread = threading.Thread(target=_serve, args=(listener, stop), daemon=True)
    thread.start()
    try:
        return _loadgen.run(
            {"host": "127.0.0.1", "port": listener.getsockname()[1], "seconds": 0.3} | spec
        )
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_every_request_is_answered_and_classified() -> None:
    result = _run({"connections": 3, "window": 4, "request": {"operation": "APPEND"}})
    answered = result["ok"] + result["errors"]
    assert result["unanswered"] == 0
    assert answered == len(result["latencies_us"]) > 0
    assert result["items"] == result["ok"]
    # every 5th answer is an error: the count is exact up to one per connection's last batch
    assert abs(result["errors"] - answered // 5) <= 1
    assert result["cpu"] > 0 and result["elapsed"] > 0


def test_a_reader_with_nothing_left_counts_no_item_and_starts_over() -> None:
    result = _run(
        {
            "connections": 1,
            "window": 1,
            "request": {"operation": "READ", "queue_name": "Q-ABCDE12345"},
            "clients": ["C-R0001"],
            "items": "read",
        }
    )
    # C-R0001 has nothing to read ("no_messages" counts no item); the connection then reads
    # as another client, which gets messages
    assert 0 < result["items"] < result["ok"]


def test_a_batch_append_counts_its_values() -> None:
    result = _run(
        {
            "connections": 1,
            "window": 2,
            "request": {"operation": "APPEND_BATCH", "values": [1, 2, 3]},
            "items": "batch_append",
            "batch": 3,
        }
    )
    assert result["items"] == 3 * result["ok"] > 0
