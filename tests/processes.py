"""Broker nodes as real OS processes (``python -m trio_broker node``), for process-level tests.

Usage, inside a trio test::

    async with open_nodes(tmp_path) as nodes:
        node = await nodes.start(tmp_path / "data")    # waits for the ready line
        ... talk to node.port ...
        node.kill()                                     # or terminate(), stop(), cont()
        await node.wait()
        node = await nodes.restart(node)                # same data dir, same port

Every node's stdout and stderr go to files under ``<base>/logs`` so nothing can block on a full
pipe and the output is still there for diagnostics after the process is gone. ``open_nodes``
reaps every process it started when it exits, even when the test failed (SIGCONT + SIGKILL,
then wait), and prints each node's command, exit status and stderr tail, which pytest shows
only for failing tests.

Every wait here has a deadline; nothing loops unboundedly.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import trio

HOST = "127.0.0.1"
READY_TIMEOUT = 15.0
EXIT_TIMEOUT = 10.0
_POLL_INTERVAL = 0.02
_PORT_RETRIES = 3

READY_RE = re.compile(
    r"^trio_broker node (?P<broker_id>B-[A-Z0-9]{5}) of cluster (?P<cluster_id>G-[A-Z0-9]{5}) "
    r"listening on (?P<host>\S+):(?P<port>\d+), data in (?P<data_dir>.+)$"
)


def free_port(host: str = HOST) -> int:
    """A port that was free a moment ago (bind to port 0, read it back, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def node_command(*args: str) -> list[str]:
    """The command line for ``python -m trio_broker node ARGS`` with this interpreter."""
    return [sys.executable, "-m", "trio_broker", "node", *args]


def _log_file(path: Path) -> BinaryIO:
    # Blocking, but a local file: the child gets its own copy of the descriptor, we close ours.
    return open(path, "wb")


class NodeFailed(AssertionError):
    """A node did not become ready (it exited, printed garbage, or took too long)."""


class NodeProcess:
    """One ``python -m trio_broker node`` process, started by :class:`Nodes`."""

    def __init__(
        self,
        process: trio.Process,
        *,
        name: str,
        args: Sequence[str],
        port: int | None,
        data_dir: Path | None,
        stdout_path: Path,
        stderr_path: Path,
    ) -> None:
        self.process = process
        self.name = name
        self.args = list(args)
        self.port = port
        self.data_dir = data_dir
        self.stdout_path = stdout_path
        self.stderr_path = stderr_path
        self.ready_line: str | None = None
        self.broker_id: str | None = None
        self.cluster_id: str | None = None
        self.host: str | None = None
        self.reported_data_dir: str | None = None
        self.extra_args: list[str] = []
        """The ``extra_args`` :meth:`Nodes.start` was given (flags beyond host/port/data-dir)."""

    @property
    def address(self) -> str:
        """``HOST:PORT``, as other nodes' ``--seed`` takes it."""
        return f"{self.host or HOST}:{self.port}"

    # -- state and output -----------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stdout_text(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def describe(self, tail: int = 4000) -> str:
        """What went on with this node, for failure messages."""
        status = "running" if self.running else f"exited with status {self.returncode}"
        stderr = self.stderr_text()
        if len(stderr) > tail:
            stderr = "...\n" + stderr[-tail:]
        return (
            f"--- node {self.name} (pid {self.pid}, {status})\n"
            f"command: {' '.join(self.args)}\n"
            f"stdout:\n{self.stdout_text()}"
            f"stderr:\n{stderr}"
        )

    # -- readiness ------------------------------------------------------------------------------

    async def wait_ready(self, within: float = READY_TIMEOUT) -> None:
        """Wait for the ready line on stdout; raise :class:`NodeFailed` if the node exits first."""
        try:
            with trio.fail_after(within):
                while True:
                    first_line, newline, _ = self.stdout_text().partition("\n")
                    if newline:
                        break
                    if not self.running:
                        # It may have printed the line just before exiting: look once more.
                        first_line, newline, _ = self.stdout_text().partition("\n")
                        if newline:
                            break
                        raise NodeFailed(f"node exited before it was ready\n{self.describe()}")
                    await trio.sleep(_POLL_INTERVAL)
        except trio.TooSlowError:
            raise NodeFailed(f"node not ready after {within} s\n{self.describe()}") from None
        match = READY_RE.match(first_line)
        if match is None:
            raise NodeFailed(f"unexpected ready line {first_line!r}\n{self.describe()}")
        self.ready_line = first_line
        self.broker_id = match["broker_id"]
        self.cluster_id = match["cluster_id"]
        self.host = match["host"]
        self.reported_data_dir = match["data_dir"]
        port = int(match["port"])
        if self.port is not None and port != self.port:
            raise NodeFailed(f"node listens on {port}, not {self.port}\n{self.describe()}")
        self.port = port

    # -- signals --------------------------------------------------------------------------------

    def send_signal(self, signum: int) -> None:
        if self.running:
            self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL: the crash case, nothing gets to clean up."""
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        """SIGTERM: graceful shutdown."""
        self.send_signal(signal.SIGTERM)

    def interrupt(self) -> None:
        """SIGINT: graceful shutdown, as from Ctrl-C."""
        self.send_signal(signal.SIGINT)

    def stop(self) -> None:
        """SIGSTOP: freeze the node (a stall, a GC pause, a VM migration...)."""
        self.send_signal(signal.SIGSTOP)

    def cont(self) -> None:
        """SIGCONT: let a stopped node run again."""
        self.send_signal(signal.SIGCONT)

    async def wait(self, within: float = EXIT_TIMEOUT) -> int:
        """Wait for the process to exit and return its status (negative: killed by a signal)."""
        try:
            with trio.fail_after(within):
                return await self.process.wait()
        except trio.TooSlowError:
            raise AssertionError(
                f"node did not exit within {within} s\n{self.describe()}"
            ) from None

    async def reap(self) -> None:
        """Make sure the process is gone: SIGCONT (in case it is stopped), SIGKILL, wait."""
        with trio.CancelScope(shield=True), trio.move_on_after(EXIT_TIMEOUT):
            if self.running:
                with contextlib.suppress(ProcessLookupError):
                    self.process.send_signal(signal.SIGCONT)
                    self.process.send_signal(signal.SIGKILL)
            await self.process.wait()


class Nodes:
    """Starts node processes and remembers them all, to reap them; see :func:`open_nodes`."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = Path(base_dir)
        self.log_dir = self.base_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.processes: list[NodeProcess] = []
        self._counter = itertools.count(1)

    async def spawn(
        self, args: Sequence[str], *, port: int | None = None, data_dir: Path | None = None
    ) -> NodeProcess:
        """Start ``python -m trio_broker node ARGS`` as is; does not wait for anything."""
        name = f"n{next(self._counter)}"
        stdout_path = self.log_dir / f"{name}.stdout"
        stderr_path = self.log_dir / f"{name}.stderr"
        command = node_command(*args)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with _log_file(stdout_path) as out, _log_file(stderr_path) as err:
            process = await trio.lowlevel.open_process(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=self.base_dir,
                env=env,
            )
        node = NodeProcess(
            process,
            name=name,
            args=command,
            port=port,
            data_dir=data_dir,
            stdout_path=stdout_path,
            stderr_path=stderr_path,
        )
        self.processes.append(node)
        return node

    async def start(
        self,
        data_dir: Path | str,
        *,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        wait_ready: bool = True,
        within: float = READY_TIMEOUT,
    ) -> NodeProcess:
        """Start a node on 127.0.0.1 with ``data_dir`` and wait for its ready line.

        With no ``port``, picks a free one, and retries with another if a different process
        grabbed it in between. With ``wait_ready=False``, returns as soon as it is spawned
        (for nodes that are expected to fail).
        """
        data_dir = Path(data_dir)
        attempts = 1 if port is not None or not wait_ready else _PORT_RETRIES
        for attempt in range(attempts):
            chosen = port if port is not None else free_port()
            args = ["--host", HOST, "--port", str(chosen), "--data-dir", str(data_dir), *extra_args]
            node = await self.spawn(args, port=chosen, data_dir=data_dir)
            node.extra_args = list(extra_args)
            if not wait_ready:
                return node
            try:
                await node.wait_ready(within)
            except NodeFailed:
                lost_port_race = not node.running and "cannot listen" in node.stderr_text()
                if lost_port_race and attempt + 1 < attempts:
                    continue
                raise
            return node
        raise AssertionError("unreachable")  # pragma: no cover

    async def restart(
        self, node: NodeProcess, *, same_port: bool = True, extra_args: Sequence[str] = ()
    ) -> NodeProcess:
        """Start a new process on a stopped node's data dir (and port, by default)."""
        assert not node.running, f"node {node.name} is still running"
        assert node.data_dir is not None
        return await self.start(
            node.data_dir, port=node.port if same_port else None, extra_args=extra_args
        )

    async def start_member(
        self,
        data_dir: Path | str,
        *,
        seeds: Sequence[NodeProcess | str] = (),
        port: int | None = None,
        extra_args: Sequence[str] = (),
        within: float = READY_TIMEOUT,
    ) -> NodeProcess:
        """Start a node that joins the cluster of ``seeds`` (nodes or ``HOST:PORT`` strings).

        With no seeds it founds a cluster of its own, like :meth:`start`. A joining node prints
        its ready line once the leader accepted it as a learner.
        """
        seed_args: list[str] = []
        for seed in seeds:
            seed_args += ["--seed", seed.address if isinstance(seed, NodeProcess) else seed]
        return await self.start(
            data_dir, port=port, extra_args=[*extra_args, *seed_args], within=within
        )

    async def restart_same(
        self, node: NodeProcess, *, keep_seeds: bool = False, extra_args: Sequence[str] = ()
    ) -> NodeProcess:
        """Like :meth:`restart`, with the flags ``node`` was started with (without its
        ``--seed`` flags unless ``keep_seeds``: a broker that joined rejoins from its data dir),
        then ``extra_args``."""
        flags: list[str] = []
        previous = iter(node.extra_args)
        for flag in previous:
            if flag == "--seed" and not keep_seeds:
                next(previous, None)
                continue
            flags.append(flag)
        return await self.restart(node, extra_args=[*flags, *extra_args])

    async def run(self, args: Sequence[str], *, within: float = EXIT_TIMEOUT) -> NodeProcess:
        """Run ``python -m trio_broker node ARGS`` to completion (for commands that must fail)."""
        node = await self.spawn(args)
        await node.wait(within)
        return node

    async def aclose(self) -> None:
        for node in self.processes:
            await node.reap()

    def report(self) -> str:
        return "\n".join(node.describe() for node in self.processes)


@contextlib.asynccontextmanager
async def open_nodes(base_dir: Path | str) -> AsyncIterator[Nodes]:
    """A :class:`Nodes` whose processes are all killed and reaped when the block exits."""
    nodes = Nodes(Path(base_dir))
    try:
        yield nodes
    finally:
        await nodes.aclose()
        if nodes.processes:
            # Captured by pytest and shown only when the test failed.
            print(nodes.report())


def value_for(i: int) -> Any:
    """The i-th value a writer appends (0-based): unique, and of every JSON type in turn."""
    kind = i % 5
    if kind == 0:
        return i
    if kind == 1:
        return f"m{i}"
    if kind == 2:
        return i + 0.5
    if kind == 3:
        return [i, True, None]
    return {"i": i}
