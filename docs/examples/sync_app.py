"""A synchronous program on trio_broker: a WSGI app appends jobs, a loop consumes them.

No event loop in sight: :mod:`trio_broker.sync` runs the client on a thread of its own and its
calls block, each within the ``timeout`` given to ``connect`` (seconds). The WSGI app is
served by the standard library's ``wsgiref`` here; any WSGI server (gunicorn, uWSGI,
mod_wsgi) serves it the same way, from as many threads as it likes. Run it against a broker as::

    python docs/examples/sync_app.py 127.0.0.1:9001 --jobs 5

It serves the app on a free port of 127.0.0.1, posts ``--jobs`` jobs to it, and consumes them.
"""

from __future__ import annotations

import argparse
import json
import threading
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import trio_broker
import trio_broker.sync


def make_app(client: trio_broker.sync.Client, queue_id: str) -> Callable[..., Iterable[bytes]]:
    """A WSGI app: ``POST /jobs`` with a JSON body appends it as a job."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        answer: dict[str, Any]
        if environ["REQUEST_METHOD"] != "POST" or environ["PATH_INFO"] != "/jobs":
            status, answer = "404 Not Found", {"error": "POST /jobs only"}
        else:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            try:
                job = json.loads(environ["wsgi.input"].read(length))
            except ValueError:
                status, answer = "400 Bad Request", {"error": "the body is not JSON"}
            else:
                try:
                    status, answer = "200 OK", {"accepted": client.append(queue_id, job)}
                except (trio_broker.BrokerError, trio_broker.RequestTimeoutError) as exc:
                    status, answer = "503 Service Unavailable", {"error": str(exc)}
        payload = json.dumps(answer).encode()
        start_response(status, [("Content-Type", "application/json")])
        return [payload]

    return app


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def main(seeds: list[str], jobs: int) -> None:
    with trio_broker.sync.connect(seeds, timeout=10) as client:
        queue_id = client.create_queue()
        with make_server(
            "127.0.0.1", 0, make_app(client, queue_id), handler_class=QuietHandler
        ) as web:
            serving = threading.Thread(target=web.serve_forever)
            serving.start()
            try:
                for i in range(jobs):
                    request = urllib.request.Request(
                        f"http://127.0.0.1:{web.server_port}/jobs",
                        data=json.dumps({"job": i, "resize": [640, 480]}).encode(),
                        headers={"Content-Type": "application/json"},
                    )
                    with urllib.request.urlopen(request, timeout=30) as response:
                        answer = json.load(response)
                    print(f"http: job {i} accepted as {answer['accepted']}", flush=True)
            finally:
                web.shutdown()
                serving.join()
        # The worker: every job, at least once (acknowledged after processing).
        for done, message in enumerate(client.consume(queue_id, ack=True, wait=0.5), 1):
            print(f"worker: job {message.sequence_num}: {json.dumps(message.data)}", flush=True)
            if done == jobs:
                break
    print("done", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("seeds", nargs="+", help="broker addresses, HOST:PORT")
    parser.add_argument("--jobs", type=int, default=5)
    args = parser.parse_args()
    main(args.seeds, args.jobs)
