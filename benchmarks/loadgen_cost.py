"""The bench's load generator on its own: its CPU per answer against a server that costs nothing.

    python -m benchmarks.loadgen_cost [--connections C] [--window W] [--seconds S]

Runs :func:`trio_broker._cli._loadgen.run` (the generator ``python -m trio_broker bench``
starts) against a trivial server in another process on 127.0.0.1, which answers every
request frame at once with a fixed success frame. What the generator prints at its end (its
epoll waits and ready sockets per answer, its user and system CPU per answer) is then its own
cost with answers that arrive as fast as it can take them; the bench's rows show the same line
with the brokers' pace (docs/performance-history.md, "One request in flight").
"""

from __future__ import annotations

import argparse
import os
import select
import socket

from trio_broker._cli._loadgen import run

ANSWER = b'{"status":"success","sequence_num":12345}'
ANSWER_FRAME = len(ANSWER).to_bytes(4, "big") + ANSWER


def _serve(listener: socket.socket) -> None:
    """Answer every whole frame at once; return once every connection closed."""
    poller = select.epoll()
    poller.register(listener.fileno(), select.EPOLLIN)
    socks: dict[int, socket.socket] = {}
    buffered: dict[int, bytes] = {}
    while True:
        for fd, _mask in poller.poll():
            if fd == listener.fileno():
                sock, _ = listener.accept()
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                socks[sock.fileno()] = sock
                buffered[sock.fileno()] = b""
                poller.register(sock.fileno(), select.EPOLLIN)
                continue
            sock = socks[fd]
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                continue
            if not data:
                poller.unregister(fd)
                sock.close()
                del socks[fd]
                if not socks:
                    return
                continue
            data = buffered[fd] + data
            position = frames = 0
            while len(data) - position >= 4:
                end = position + 4 + int.from_bytes(data[position : position + 4], "big")
                if end > len(data):
                    break
                position, frames = end, frames + 1
            buffered[fd] = data[position:]
            if frames:
                sock.sendall(ANSWER_FRAME * frames)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--window", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    pid = os.fork()
    if pid == 0:  # the server
        try:
            _serve(listener)
        finally:
            os._exit(0)
    listener.close()
    request = {"operation": "APPEND", "queue_name": "Q-AAAAABBBBB", "data": "x" * 100}
    result = run(
        {
            "host": "127.0.0.1",
            "port": port,
            "connections": args.connections,
            "window": args.window,
            "seconds": args.seconds,
            "request": request,
        }
    )
    os.waitpid(pid, 0)
    answers = result["ok"] + result["errors"]
    print(
        f"load generator, {args.connections} connections x {args.window} in flight: "
        f"{answers:,} answers, {result['cpu'] / max(answers, 1) * 1e6:.2f} us of CPU per answer"
    )


if __name__ == "__main__":
    main()
