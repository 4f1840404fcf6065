"""The status page (``/`` on the metrics port), as a person sees it in a real browser.

A real broker on 127.0.0.1 with a queue and a reader; headless Chromium (Debian's ``chromium``
package, which ``.ci/run`` installs) loads the page, runs its script, and the test reads the
resulting DOM and looks at a screenshot. Between the page and the broker sits a small proxy
that appends one message just before the page's first ``/status.json`` refresh is answered,
so the numbers on the page change only if the script refreshed them in place.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from functools import partial
from html.parser import HTMLParser
from pathlib import Path

import pytest
import trio

from trio_broker._runtime import BrokerConfig, open_broker

from .wire import call

CHROMIUM = "/usr/bin/chromium"
DEADLINE = 90
WINDOW = (1100, 900)


def find_chromium() -> str:
    """Chromium's path; without it, skip, except in CI (the CI variable set): there, fail."""
    path = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but chromium is not installed: .ci/run installs it (apt-get)")
        pytest.skip("chromium is not installed (apt-get install chromium); CI installs it")
    return path


@pytest.fixture
def chromium() -> str:
    return find_chromium()


def test_without_chromium_the_test_skips_except_in_ci(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="chromium is not installed"):
        find_chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set but chromium is not installed"):
        find_chromium()


async def run_chromium(chromium: str, profile: Path, *args: str) -> bytes:
    """Run headless Chromium with ``profile`` as its new profile folder; its stdout."""
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    with trio.fail_after(DEADLINE):
        result = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, stdin=subprocess.DEVNULL
        )
    return result.stdout


class Tables(HTMLParser):
    """The text of every ``<table id=...>``'s body rows, and of elements with data-field."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.fields: dict[str, str] = {}
        self._table: str | None = None
        self._in_body = False
        self._cell: list[str] | None = None
        self._field: str | None = None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = attrs.get("id")
            self.tables[self._table] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.tables[self._table].append([])
        elif tag == "td" and self._in_body:
            self._cell = []
        if "data-field" in attrs:
            self._field = attrs["data-field"]
            self.fields[self._field] = ""

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tbody":
            self._in_body = False
        elif tag in ("b", "span"):
            self._field = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._field is not None:
            self.fields[self._field] += data


class AppendingProxy:
    """Forwards HTTP requests to the metrics port; before answering the first /status.json, it
    appends one message to the queue. Keeps the page it served at ``/``."""

    def __init__(self, broker_port: int, metrics_port: int, queue_id: str) -> None:
        self.broker_port = broker_port
        self.metrics_port = metrics_port
        self.queue_id = queue_id
        self.paths: list[str] = []
        self.first_page: str | None = None

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                head += chunk
            path = head.split(b" ", 2)[1].decode()
            if path.startswith("/status.json") and "/status.json" not in self.paths:
                await call(
                    self.broker_port,
                    {"operation": "APPEND", "queue_name": self.queue_id, "data": "late"},
                )
            self.paths.append(path.split("?")[0])
            upstream = await trio.open_tcp_stream("127.0.0.1", self.metrics_port)
            async with upstream:
                await upstream.send_all(head)
                answer = b""
                while chunk := await upstream.receive_some(65536):
                    answer += chunk
            if path == "/" and self.first_page is None:
                self.first_page = answer.partition(b"\r\n\r\n")[2].decode()
            await stream.send_all(answer)


def png_size_and_colours(data: bytes) -> tuple[tuple[int, int], int]:
    """A PNG's (width, height) and how many distinct byte values its pixel data holds."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    offset, idat, size = 8, b"", None
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        offset += 12 + length
    return size, len(set(zlib.decompress(idat)))


async def test_status_page_in_a_real_browser(tmp_path, chromium):
    config = BrokerConfig(data_dir=tmp_path / "broker", port=0, metrics_port=0)
    async with open_broker(config) as broker, trio.open_nursery() as nursery:
        queue_id = (await call(broker.port, {"operation": "CREATE_QUEUE"}))["queue_id"]
        for i in range(3):
            await call(broker.port, {"operation": "APPEND", "queue_name": queue_id, "data": i})
        read = {"operation": "READ", "queue_name": queue_id, "client_id": "C-READR"}
        assert (await call(broker.port, read))["sequence_num"] == 1  # the reader lags by 2

        proxy = AppendingProxy(broker.port, broker.metrics_port, queue_id)
        listeners = await nursery.start(partial(trio.serve_tcp, proxy.handle, 0, host="127.0.0.1"))
        url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/"

        # Chromium loads the page, runs its script for 10 s of virtual time, and dumps the DOM.
        dom = await run_chromium(
            chromium, tmp_path / "profile-1", "--virtual-time-budget=10000", "--dump-dom", url
        )
        # The page as the server rendered it: what a browser without JavaScript shows.
        assert proxy.first_page is not None
        before = Tables(proxy.first_page)
        assert before.fields["broker_id"] == broker.broker_id
        assert before.fields["role"] == "leader"
        assert [queue_id, "3", "3", "C-READR", "1", "2"] in before.tables["queues"]
        assert "<noscript>" in proxy.first_page

        # After the script ran: refreshed in place from /status.json, after the append.
        assert "/status.json" in proxy.paths, proxy.paths
        assert proxy.paths.count("/") == 1, "the page was reloaded, not refreshed in place"
        after = Tables(dom.decode())
        assert after.fields["broker_id"] == broker.broker_id
        assert after.fields["role"] == "leader"
        assert after.fields["cluster_id"] == broker.cluster_id
        assert [queue_id, "4", "4", "C-READR", "1", "3"] in after.tables["queues"]
        (member,) = after.tables["brokers"]
        assert member[:3] == [broker.broker_id, f"127.0.0.1:{broker.port}", "leader"]
        assert member[4:] == ["active", "0"]
        (group,) = after.tables["groups"]
        assert group[:2] == [broker.cluster_id, broker.broker_id]
        requests = {row[0]: row for row in after.tables["requests"]}
        assert int(requests["APPEND"][3]) == 4

        # The same data for machines.
        status = json.loads(await fetch(broker.metrics_port, "/status.json"))
        (queue,) = status["queues"]
        assert (queue["length"], queue["consumers"][0]["lag"]) == (4, 3)

        # It renders: a screenshot of the window's size that is not blank.
        shot = tmp_path / "status.png"
        await run_chromium(
            chromium,
            tmp_path / "profile-2",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            "--virtual-time-budget=3000",
            f"--screenshot={shot}",
            url,
        )
        size, colours = png_size_and_colours(shot.read_bytes())
        assert size == WINDOW
        assert colours > 16, "the screenshot is blank"
        nursery.cancel_scope.cancel()


async def fetch(port: int, path: str) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK"), head
    return body
