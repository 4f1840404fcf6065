"""The bench starts its load generators without importing the package: a generator is the
standard library and orjson, and the package's imports (trio, the codec, the command line)
took longer than the second the bench gives its generators to start."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import orjson

from trio_broker._cli._bench_load import GENERATOR

from .test_loadgen12_answers import SUCCESS, _Server


def test_a_generator_runs_without_importing_the_package(tmp_path: Path) -> None:
    # A trio_broker that cannot be imported comes first on the path: the generator must not
    # need it (as ``-m trio_broker._cli._loadgen`` it did).
    poisoned = tmp_path / "trio_broker"
    poisoned.mkdir()
    (poisoned / "__init__.py").write_text("raise ImportError('the package was imported')\n")
    env = os.environ | {"PYTHONPATH": str(tmp_path)}
    with _Server(lambda conn, n: SUCCESS) as server:
        spec = {
            "host": "127.0.0.1",
            "port": server.port,
            "connections": 2,
            "window": 2,
            "seconds": 0.2,
            "drain_seconds": 0.5,
            "request": {"operation": "APPEND", "data": "x"},
        }
        done = subprocess.run(
            GENERATOR,
            input=orjson.dumps(spec),
            capture_output=True,
            env=env,
            cwd=tmp_path,
            timeout=30,
        )
    assert done.returncode == 0, done.stderr.decode()
    result = orjson.loads(done.stdout)
    assert result["ok"] == sum(server.requests.values()) > 0
    assert result["errors"] == result["unanswered"] == 0
