"""A receive's requests on a broker hosting several groups, in runs of one group each
(``GroupRouting.handle_many``)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import trio

from trio_broker._runtime import _group_routing
from trio_broker._runtime._group_routing import GroupRouting


def test_plain_appends_of_the_runs_queue_join_it_without_routing_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pipelined appends of one queue, then another group's queue, then the first again: three
    runs in request order, each to its group's replica; the group is worked out for a run's
    first request and for the request that ends it, not for each append of the run's queue
    (before: once for every request)."""
    decided: list[tuple[str, list[Any]]] = []

    def replica(name: str) -> Any:
        async def handle_many(requests: list[Any], session: Any, answered: Any) -> None:
            decided.append((name, list(requests)))

        return SimpleNamespace(runs=SimpleNamespace(handle_many=handle_many))

    host = SimpleNamespace(
        primary=replica("primary"),
        groups={"G-AAAAA": replica("A"), "G-BBBBB": replica("B")},
        meta=SimpleNamespace(map=None),
    )
    named = []
    real = _group_routing.named_group

    def counted(request: Any) -> Any:
        named.append(request)
        return real(request)

    monkeypatch.setattr(_group_routing, "named_group", counted)
    a, b = "Q-AAAAA00001", "Q-BBBBB00001"
    requests: list[Any] = [
        *((a, b"x", None) for _ in range(5)),
        *((b, b"y", None) for _ in range(3)),
        (a, b"z", None),
    ]
    trio.run(GroupRouting(host).handle_many, requests, None, lambda answers: None)  # type: ignore[arg-type]
    assert [(name, len(run)) for name, run in decided] == [("A", 5), ("B", 3), ("A", 1)]
    assert [r for _, run in decided for r in run] == requests
    assert len(named) == 5, named  # (each run's first, and the two requests that ended one)
