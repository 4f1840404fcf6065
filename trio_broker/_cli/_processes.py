"""Broker processes on this machine, for `python -m trio_broker cluster` and the benchmarks."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

READY_DEADLINE = 30.0


async def start_node(
    data_dir: Path,
    port: int,
    *,
    seed: int | None = None,
    log_level: str = "WARNING",
    groups: int = 1,
    extra_args: Sequence[str] = (),
) -> tuple[trio.Process, str]:
    """Start ``python -m trio_broker node`` on 127.0.0.1; returns it and its ready line."""
    cmd = [
        sys.executable,
        "-m",
        "trio_broker",
        "node",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--log-level",
        log_level,
    ]
    if seed is not None:
        cmd += ["--seed", f"127.0.0.1:{seed}"]
    if groups != 1:
        cmd += ["--groups", str(groups)]
    cmd += list(extra_args)
    process = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE)
    assert process.stdout is not None
    line = b""
    try:
        with trio.fail_after(READY_DEADLINE):
            while b"\n" not in line:
                chunk = await process.stdout.receive_some(4096)
                if not chunk:
                    raise RuntimeError(f"the broker on port {port} exited before it was ready")
                line += chunk
    except BaseException:
        await stop_nodes([process])
        raise
    return process, line.decode().splitlines()[0]


async def stop_nodes(processes: Sequence[trio.Process]) -> None:
    """SIGTERM, a grace of 10 s, then SIGKILL; always waits for every process."""
    with trio.CancelScope(shield=True):
        for process in processes:
            if process.returncode is None:
                process.terminate()
        for process in processes:
            with trio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
