"""docs/operations.md, followed as written: every ```sh block runs, in order, in one folder.

Brokers are separate processes on 127.0.0.1 (each "machine" of the guide has its own port and
data folder); every port of the guide is moved by one random offset to ports nobody answers on,
so that two suites on one machine never meet on the guide's own ports. Between blocks the test
waits as a reader would ("wait until status shows it"): after a block starts brokers, until each
of them answers and is a voter of a cluster with a leader. Then it checks what the guide says
each block shows.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .wire import call

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
BLOCK = re.compile(r"^```sh\n(.*?)^```", re.MULTILINE | re.DOTALL)
BLOCK_TIMEOUT = 60
FORM_TIMEOUT = 45
POLL = 0.05
"""Seconds between two looks at a broker the guide started (each look is one short request)."""


def guide_blocks() -> list[str]:
    return BLOCK.findall(GUIDE.read_text())


def guide_ports(blocks: list[str]) -> list[int]:
    """The ports the guide's brokers listen on (addresses and `--port`/`--metrics-port`)."""
    text = "".join(blocks)
    found = re.findall(r"127\.0\.0\.1:(\d+)", text) + re.findall(
        r"--(?:metrics-)?port[ =](\d+)", text
    )
    return sorted({int(p) for p in found})


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out as an outgoing connection's local end."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # (Linux's default)


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def moved_blocks(blocks: list[str], ports: list[int]) -> tuple[list[str], int]:
    """The guide's blocks with every port moved by one offset to ports nobody answers on,
    and the offset: another suite on the machine may run the guide's own ports at the same
    time. The offset keeps the guide's shape (9101..9106 stay six neighbours), and every moved
    port below the kernel's range of ephemeral ports: a port in that range may be taken, any
    moment during the run, as the local end of an outgoing connection (a peer link, this
    test's own queries), and the broker started on it later cannot listen ("Address already
    in use"; a query to it is then reset by that connection's socket)."""
    rng = random.Random()
    highest = _ephemeral_low() - 1 - max(ports)
    assert highest > 10_000, f"no room for the guide's ports below {_ephemeral_low()}"
    for _ in range(50):
        shift = rng.randrange(10_000, highest)
        if all(_free(p + shift) for p in ports):
            break
    else:
        raise AssertionError("no free range of ports for the guide")
    number = re.compile(r"(?<![\d.])(" + "|".join(str(p) for p in ports) + r")(?!\d)")
    return [number.sub(lambda m: str(int(m.group(1)) + shift), b) for b in blocks], shift


def _details(port: int) -> dict[str, Any] | None:
    import trio

    async def ask() -> dict[str, Any]:
        with trio.fail_after(2):
            return await call(port, {"operation": "CLUSTER_QUERY", "details": True})

    try:
        return trio.run(ask)
    except (OSError, trio.TooSlowError, ConnectionError):
        return None


def wait_voter(port: int) -> dict[str, Any]:
    """Until the broker on ``port`` answers, knows a leader and is a voter; its answer."""
    deadline = time.monotonic() + FORM_TIMEOUT
    answer = None
    while time.monotonic() < deadline:
        answer = _details(port)
        if answer is not None and answer.get("leader_id"):
            me = next((b for b in answer["brokers"] if b["broker_id"] == answer["self_id"]), None)
            if me is not None and me.get("membership") == "voter":
                return answer
        time.sleep(POLL)
    raise AssertionError(f"broker on port {port} did not become a voter: {answer}")


class Shell:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        bin_dir = folder / "bin"
        bin_dir.mkdir()
        # `python` in the guide is this interpreter (a wrapper, not a symlink: a virtual
        # environment is recognised by the path the interpreter is started from).
        wrapper = bin_dir / "python"
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        wrapper.chmod(0o755)
        if shutil.which("curl") is None:
            # The guide reads metrics with `curl -s URL`; a machine without curl gets a stand-in.
            fetch = (
                "import sys, urllib.request; "
                "print(urllib.request.urlopen(sys.argv[-1]).read().decode())"
            )
            stand_in = bin_dir / "curl"
            stand_in.write_text(f'#!/bin/sh\nexec "{sys.executable}" -c "{fetch}" "$@"\n')
            stand_in.chmod(0o755)
        self.env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        self.groups: list[int] = []

    def run(self, block: str) -> str:
        # Each block in a process group of its own: the brokers it starts in the background
        # stay in that group, so that the end of the test stops all of them.
        proc = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=self.folder,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.groups.append(proc.pid)
        out, _ = proc.communicate(timeout=BLOCK_TIMEOUT)
        text = out.decode()
        assert proc.returncode == 0, f"block failed ({proc.returncode}):\n{block}\n---\n{text}"
        return text

    def stop_all(self) -> None:
        for pgid in self.groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)


@pytest.fixture
def shell(tmp_path):
    sh = Shell(tmp_path)
    try:
        yield sh
    finally:
        sh.stop_all()


def started_ports(block: str) -> list[int]:
    """Brokers the block starts that should become voters by themselves."""
    return [
        int(port)
        for line in block.splitlines()
        if "--join-wait" not in line
        for port in re.findall(r"trio_broker node .*?--port (\d+)", line)
    ]


def waiting_ports(block: str) -> list[int]:
    """Brokers the block starts with --join-wait: they only have to answer."""
    return [
        int(port)
        for line in block.splitlines()
        if "--join-wait" in line
        for port in re.findall(r"trio_broker node .*?--port (\d+)", line)
    ]


def wait_answering(port: int) -> None:
    deadline = time.monotonic() + FORM_TIMEOUT
    while _details(port) is None:
        assert time.monotonic() < deadline, f"broker on port {port} does not answer"
        time.sleep(POLL)


def test_the_operations_guide_works_as_written(shell):
    blocks = guide_blocks()
    assert len(blocks) >= 8, "the guide lost its runnable steps"
    ports = guide_ports(blocks)
    assert 9101 in ports and 9411 in ports, ports
    blocks, shift = moved_blocks(blocks, ports)
    outputs = []
    for block in blocks:
        out = shell.run(block)
        for port in started_ports(block):
            wait_voter(port)
        for port in waiting_ports(block):
            wait_answering(port)
        for port in re.findall(r"add-member 127\.0\.0\.1:(\d+)", block):
            wait_voter(int(port))
        outputs.append((block, out))
    seen = "\n".join(out for _, out in outputs)
    # The checks the guide promises, by what each step prints.
    assert re.search(r"cluster G-\w{5}\s+version \d+\s+leader B-\w{5}", seen)
    status_tables = [o for b, o in outputs if b.strip().endswith("status")]
    assert status_tables, "no status step"
    assert any(len(re.findall(r"B-\w{5}\s+127\.0\.0\.1", t)) == 5 for t in status_tables)
    assert '{"hello":"world"}' in seen
    assert re.search(r"added B-\w{5} as a learner", seen)
    assert re.search(r"B-\w{5} leads \(term \d+\)", seen)
    assert "backed up broker" in seen and "restored cluster" in seen
    # Several groups ("Size the replication groups"): a table per group, then leaders per
    # broker; one line per group with its queue count; each group's series in the metrics.
    assert re.search(r"6 groups; leaders per broker: (B-\w{5} \d, ){2}B-\w{5} \d", seen)
    assert re.search(r"GROUP\s+LEADER\s+ADDRESS\s+VOTERS\s+LEARNERS\s+QUEUES", seen)
    # (the six groups and the metadata group, which every broker of a cluster map hosts)
    assert len(set(re.findall(r'trio_broker_commit_index\{.*cluster_id="(G-\w{5})"', seen))) == 7
    metrics = [o for b, o in outputs if "/metrics" in b]
    assert metrics and "trio_broker_role" in metrics[0]
    # The recovered cluster serves the backed-up queue.
    last_queues = [o for b, o in outputs if "queues" in b and str(9111 + shift) in b]
    assert last_queues and re.search(r"Q-\w{10}\s+1", last_queues[-1]), last_queues


def test_the_guides_settings_file_uses_real_settings():
    """The TOML example (not run) names settings the broker knows."""
    import tomllib

    from trio_broker._cli._node_options import OPTIONS

    toml = re.search(r"^```toml\n(.*?)^```", GUIDE.read_text(), re.MULTILINE | re.DOTALL)
    assert toml is not None
    settings = tomllib.loads(toml.group(1))
    assert settings and set(settings) <= {o.key for o in OPTIONS}, settings
