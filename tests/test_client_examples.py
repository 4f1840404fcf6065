"""The example programs of docs/clients.md, run as a user would, against a real broker.

The broker runs in a trio thread of this test process; each example is a separate Python
process, bounded in time.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "docs" / "examples"


@pytest.mark.parametrize(
    ("example", "unit"), [("asyncio_service.py", "order"), ("sync_app.py", "job")]
)
def test_example_program_runs_against_a_real_broker(thread_broker, example, unit):
    count = 4
    flag = "--orders" if unit == "order" else "--jobs"
    result = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / example),
            f"127.0.0.1:{thread_broker.port}",
            flag,
            str(count),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    accepted = [line for line in lines if line.startswith("http:")]
    processed = [line for line in lines if line.startswith("worker:")]
    assert accepted == [f"http: {unit} {i} accepted as {i + 1}" for i in range(count)]
    assert len(processed) == count
    for i, line in enumerate(processed):
        assert line.startswith(f"worker: {unit} {i + 1}: ")
        assert f'"{unit}": {i}' in line
    assert lines[-1] == "done"
