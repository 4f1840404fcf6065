"""A :class:`RaftDriver` of a lone broker with no network, store or storage worker: the
driver's own bookkeeping under test, its applies handed to ``on_applied``."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trio_broker._core import _raft_messages as rm
from trio_broker._core._raft import RaftNode
from trio_broker._runtime import BrokerConfig
from trio_broker._runtime._driver import RaftDriver


def lone_driver(
    tmp_path: Path, on_applied: Callable[[Any, Any], None] = lambda payload, result: None
) -> RaftDriver:
    node = RaftNode(
        "B-AAAAA",
        hard_state=rm.HardState(0, None, 0),
        snapshot=rm.SnapshotMeta(0, 0, rm.Config(voters=frozenset({"B-AAAAA"}))),
        rng=random.Random(1),
    )
    return RaftDriver(
        "B-AAAAA",
        "G-AAAAA",
        ("127.0.0.1", 1),
        BrokerConfig(data_dir=tmp_path),
        network=None,  # type: ignore[arg-type]
        store=None,  # type: ignore[arg-type]
        worker=None,  # type: ignore[arg-type]
        node=node,
        addresses={},
        on_applied=on_applied,
        on_snapshot=lambda queues, retained: None,
    )
