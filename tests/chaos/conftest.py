"""The chaos suite runs real broker processes for tens of seconds each: only on request.

``pytest tests/chaos --chaos`` or ``TRIO_BROKER_CHAOS=1 pytest tests/chaos`` runs it; otherwise
every test here is skipped. (``--chaos`` is only known when ``tests/chaos`` is on the command
line, since pytest asks only such conftests for options; the environment variable works from
anywhere.)
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from trio_broker.testing._netns import NetnsLab, NetnsUnavailable


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos",
        action="store_true",
        default=False,
        help="run the chaos suite (real broker processes, faults, minutes)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos: real-process fault injection; needs --chaos")


def chaos_enabled(config: pytest.Config) -> bool:
    if os.environ.get("TRIO_BROKER_CHAOS", "") not in ("", "0"):
        return True
    try:
        return bool(config.getoption("--chaos"))
    except ValueError:  # the option was never added (this conftest was not an initial one)
        return False


@pytest.fixture(autouse=True)
def _chaos_only_on_request(request: pytest.FixtureRequest) -> None:
    if not chaos_enabled(request.config):
        pytest.skip("chaos suite: run with --chaos or TRIO_BROKER_CHAOS=1")


@pytest.fixture
def lab() -> Iterator[NetnsLab]:
    """Three broker namespaces plugged into a hub (``testing/_netns.py``), torn down after the
    test; skipped when this machine or user cannot make network namespaces."""
    lab = NetnsLab(3)
    try:
        lab.open()
    except NetnsUnavailable as exc:
        pytest.skip(f"network namespaces unavailable: {exc}")
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"could not build the network namespaces: {exc}")
    try:
        yield lab
    finally:
        lab.close()
        assert not lab.leftovers(), f"namespaces left behind: {lab.leftovers()}"
