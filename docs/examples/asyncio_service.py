"""An asyncio service on trio_broker: an HTTP handler appends orders, a worker consumes them.

Plain asyncio, no web framework: ``create_order`` is what a FastAPI route would be
(``@app.post("/orders") async def create_order(order: dict) -> dict``), served here by a
twenty-line HTTP server so that the example needs nothing but trio_broker. Run it against a
broker (``python -m trio_broker node``) as::

    python docs/examples/asyncio_service.py 127.0.0.1:9001 --orders 5

It starts the HTTP server on a free port of 127.0.0.1, posts ``--orders`` orders to it as a
client would, and stops once the worker has processed them all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import trio_broker


async def create_order(client: trio_broker.Client, queue_id: str, order: Any) -> dict[str, Any]:
    """The request handler: append the order and answer with its sequence number."""
    sequence_num = await client.append(queue_id, order)
    return {"accepted": sequence_num}


async def worker(client: trio_broker.Client, queue_id: str, expected: int) -> None:
    """Process every order, at least once: a batch is acknowledged after it was processed."""
    processed = 0
    async for message in client.consume(queue_id, ack=True, wait=0.5):
        print(f"worker: order {message.sequence_num}: {json.dumps(message.data)}", flush=True)
        processed += 1
        if processed == expected:
            return


async def serve_http(client: trio_broker.Client, queue_id: str) -> asyncio.Server:
    """``POST /orders`` with a JSON body, one request per connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answer: dict[str, Any]
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            headers = dict(line.lower().split(": ", 1) for line in header_lines if ": " in line)
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if request_line.split(" ")[:2] != ["POST", "/orders"]:
                status, answer = "404 Not Found", {"error": "POST /orders only"}
            else:
                try:
                    order = json.loads(body)
                except ValueError:
                    status, answer = "400 Bad Request", {"error": "the body is not JSON"}
                else:
                    status, answer = "200 OK", await create_order(client, queue_id, order)
        except trio_broker.BrokerError as exc:
            status, answer = "503 Service Unavailable", {"error": str(exc)}
        payload = json.dumps(answer).encode()
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
            + payload
        )
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def post_order(port: int, order: Any) -> dict[str, Any]:
    """A client of the service (what a browser or another service would do)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps(order).encode()
    writer.write(
        f"POST /orders HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    response = await reader.read()
    writer.close()
    answer: dict[str, Any] = json.loads(response.split(b"\r\n\r\n", 1)[1])
    return answer


async def main(seeds: list[str], orders: int) -> None:
    async with trio_broker.connect(seeds) as client:
        queue_id = await client.create_queue()
        server = await serve_http(client, queue_id)
        port = server.sockets[0].getsockname()[1]
        async with server:
            consuming = asyncio.create_task(worker(client, queue_id, orders))
            for i in range(orders):
                answer = await post_order(port, {"order": i, "item": "tea", "price": 2.5})
                print(f"http: order {i} accepted as {answer['accepted']}", flush=True)
            await consuming
    print("done", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("seeds", nargs="+", help="broker addresses, HOST:PORT")
    parser.add_argument("--orders", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.seeds, args.orders))
