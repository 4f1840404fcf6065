from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import apsw
import pytest
import trio
from hypothesis import settings

from trio_broker._cli._client import add_client_parser, run_client
from trio_broker._runtime import BrokerConfig, open_broker

settings.register_profile("broker", deadline=None)
settings.load_profile("broker")
"""No per-example deadline for property tests: Hypothesis's default (200 ms an example) is a
timed assertion, and on a loaded two-core machine an example of tests/core/test_metadata.py
took 330 ms and failed the suite. A test that must bound its time says so itself."""


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


_raise_fd_limit()


@pytest.fixture
def broker_config(ram_path):
    """One broker's settings, its data in RAM (:func:`ram_path`): the tests that use it are
    about what the broker answers, not about what its disk keeps."""
    return BrokerConfig(data_dir=ram_path / "broker", port=0)


@pytest.fixture
async def broker(broker_config):
    async with open_broker(broker_config) as broker:
        yield broker


def build_client_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trio_broker")
    add_client_parser(parser.add_subparsers(dest="command", required=True))
    return parser


@pytest.fixture
def cli(capsys):
    """Run one ``client`` command in a worker thread (it runs its own trio loop there).

    Returns (exit status, stdout, stderr).
    """

    async def run(*argv: str) -> tuple[int, str, str]:
        args = build_client_parser().parse_args(["client", *argv])
        status = await trio.to_thread.run_sync(run_client, args)
        out, err = capsys.readouterr()
        return status, out, err

    return run


# -- clients on other event loops: the anyio plugin beside pytest-trio ---------------------------
#
# pytest-trio's trio_mode marks every async test as a trio test. Tests marked
# ``@pytest.mark.anyio`` belong to anyio's plugin instead, which runs them once per
# ``anyio_backend`` (trio and asyncio): take pytest-trio's mark off them after it has set it.
# Their async fixtures are anyio's too (its hook runs them before pytest-trio sees them).


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("anyio") is not None:
            item.own_markers[:] = [m for m in item.own_markers if m.name != "trio"]


class TrioThread:
    """A trio program of its own in a background thread, for clients on other event loops.

    ``enter(cm)`` (``await aenter(cm)`` in an async test) enters an async context manager
    (``open_broker(...)``, ``open_local_cluster(...)``) in that thread and returns its value;
    it is exited at the fixture's end, before the thread's ``trio.run`` returns and the
    thread is joined.
    ``call(fn, *args)`` runs ``await fn(*args)`` there and blocks; ``await acall(fn, *args)``
    does the same without blocking the caller's event loop (trio or asyncio).
    """

    def __init__(self, portal, stack: contextlib.ExitStack) -> None:
        self._portal = portal
        self._stack = stack

    def enter(self, cm):
        return self._stack.enter_context(self._portal.wrap_async_context_manager(cm))

    async def aenter(self, cm):
        """``enter`` from an async test (trio refuses blocking calls into another trio loop
        from a thread running one, so the call is made from a worker thread)."""
        return await anyio.to_thread.run_sync(self.enter, cm)

    def call(self, fn, *args):
        return self._portal.call(fn, *args)

    async def acall(self, fn, *args):
        return await anyio.to_thread.run_sync(self._portal.call, fn, *args)


@pytest.fixture
def trio_thread():
    with contextlib.ExitStack() as stack:
        portal = stack.enter_context(anyio.from_thread.start_blocking_portal("trio"))
        thread = portal.call(threading.current_thread)
        yield TrioThread(portal, stack)
    assert not thread.is_alive(), "the broker thread was not joined"


@pytest.fixture
def thread_broker(trio_thread, tmp_path):
    """A broker on 127.0.0.1 in a trio thread of its own; tests on any event loop use it."""
    return trio_thread.enter(open_broker(BrokerConfig(data_dir=tmp_path / "thread-broker", port=0)))


# -- stores in RAM: for tests of what a store computes, not of what its disk keeps -------------


class RamPathFactory:
    """``mktemp(name)``: a new directory under ``base`` (a tmpfs), as ``tmp_path_factory``."""

    def __init__(self, base: Path) -> None:
        self.base = base

    def mktemp(self, basename: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{basename}-", dir=self.base))


RAM_ROOM = 1 << 30
"""Free bytes /dev/shm must have for :func:`ram_path_factory` to use it (the model tests
write some tens of MiB there; each :func:`ram_path` is removed after its test)."""


@pytest.fixture(scope="session")
def ram_path_factory(tmp_path_factory):
    """As ``tmp_path_factory``, in /dev/shm where there is one with room to spare (else the
    usual temporary folder; a container's is often 64 MiB): a sync there costs nothing, so
    the model tests that open, fill and reopen hundreds of stores check the same SQL in a
    third of the time. What survives a power cut is decided by the fault-injecting VFS
    (tests/test_power_loss.py), whatever the medium; the process tests keep real files."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free >= RAM_ROOM):
        yield tmp_path_factory
        return
    base = Path(tempfile.mkdtemp(prefix="trio-broker-tests-", dir=shm))
    try:
        yield RamPathFactory(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def ram_path(ram_path_factory, request):
    """As ``tmp_path``, from :func:`ram_path_factory`; removed once the test is over (RAM is
    not kept for the last runs as the temporary folder is). Whatever runs on it from another
    fixture (``trio_thread``) must be torn down first: list ``ram_path`` before it."""
    path = ram_path_factory.mktemp(re.sub(r"\W", "_", request.node.name)[:40])
    yield path
    if isinstance(ram_path_factory, RamPathFactory):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def new_store_dir(ram_path_factory):
    """``new_store_dir(name)``: a new folder from :func:`ram_path_factory` holding the
    database a ``Store`` creates in an empty folder, copied from one made once per session.

    For the property tests that open a fresh store for each of hundreds of examples: creating
    the schema (6 ms of CPU) cost more than a short history's writes; a copy and an open cost
    1 ms. What the tests compare (the store's answers and rows against the reference) starts
    from the same empty database either way; creating one is what the schema tests check
    (tests/test_storage.py, ``test_fresh_database_gets_current_schema_version``)."""
    from trio_broker._storage import DB_FILE, Store

    template = ram_path_factory.mktemp("template")
    Store(template).close()
    # A closed store leaves its whole database in the one file (its kept WAL beside it holds
    # only a copy of the first page: _storage/_checkpoint.py, "The WAL is kept").
    kept = [DB_FILE + "-wal", DB_FILE + "-shm"]
    assert sorted(p.name for p in template.iterdir()) == sorted([DB_FILE, "LOCK", *kept])

    def make(name: str) -> Path:
        path = ram_path_factory.mktemp(name)
        shutil.copyfile(template / DB_FILE, path / DB_FILE)
        return path

    return make


STORE_QUEUE = "Q-AAAAABBBBB"
"""The queue :func:`store_db` holds."""


@pytest.fixture(scope="module")
def store_db(tmp_path_factory):
    """One store's database for a test module that writes rows straight through ``_storage``
    functions (its queue: :data:`STORE_QUEUE`); each test's writes are rolled back (``db``)."""
    from trio_broker._core._commands import CreateQueue
    from trio_broker._storage import DB_FILE, Store

    path = tmp_path_factory.mktemp("store")
    store = Store(path)
    store.apply([CreateQueue(STORE_QUEUE)])
    store.close()
    connection = apsw.Connection(str(path / DB_FILE))
    yield connection
    connection.close()


@pytest.fixture
def db(store_db):
    """:func:`store_db` inside a transaction rolled back after the test."""
    store_db.execute("BEGIN")
    yield store_db
    store_db.execute("ROLLBACK")


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every payload the connections' read loops and poller decode, in order (for the tests
    that count how often a request is decoded: tests/test_peerpoll_decode_once.py,
    tests/test_revdecode_decoded.py)."""
    from trio_broker._runtime import _connections

    seen: list[bytes] = []
    decode = _connections.decode_client_request

    def counted(payload: Any) -> Any:
        seen.append(bytes(payload))
        return decode(payload)

    monkeypatch.setattr(_connections, "decode_client_request", counted)
    return seen


@pytest.fixture
def apply_waits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """For each Ready a core gives while committed entries wait unapplied (the replicas'
    apply lag holding them), how many wait: the power-loss runners' tests check their cuts
    land in such moments (tests/sim/test_power_loss_apply_lag.py,
    tests/test_failstop_groups_lag.py)."""
    from trio_broker._core import _raft

    waits: list[int] = []
    ready = _raft.RaftNode.ready

    def counted(node: _raft.RaftNode) -> _raft.Ready:
        rd = ready(node)
        if not rd.committed_entries and rd.snapshot is None and node.commit > node.applied:
            waits.append(node.commit - node.applied)
        return rd

    monkeypatch.setattr(_raft.RaftNode, "ready", counted)
    return waits
