"""The per-call figures of the seventh round's codec and routing cuts, on one thread's CPU.

    python -m benchmarks.codec_parts [--repeat 9]

Each line is ``time.thread_time`` per item, best of ``--repeat`` rounds
(docs/performance-history.md, "The leader's request path (seventh round)", "Several groups' saves of
one receive (seventh round)", "A replica's per-append path (seventh round)"):

- **decode_client_request**: the bench's 150-byte APPEND of the original contract (a string
  value: the compact frame taken without orjson's write-back);
- **dumps_values**: a batch of 100 string values of 100 bytes, each value's stored bytes;
- **appended results**: a run of 256 appends' ``MessageAppended`` results (every broker's
  apply);
- **APPEND_RUNS decode**: a replica's decode of one run of 16 plain appends (the form brokers
  send each other), per append;
- **group of batches decode**: a COMMAND_GROUP of 19 plain APPEND_BATCHes of 100 values, per
  value;
- **routing**: a receive of 16 plain appends of one queue cut into runs on a broker hosting
  several groups (``GroupRouting.handle_many`` with stand-in groups), per request.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import orjson

from benchmarks.leader_parts import _best, _done
from trio_broker._protocol._codec import decode_client_request, dumps_values
from trio_broker._protocol._entries import payload_from_obj
from trio_broker._runtime._group_routing import GroupRouting
from trio_broker._storage import _append_sql

try:
    _appended_run = _append_sql._appended_run
except AttributeError:  # (before the seventh round: one call per result; to compare with it)

    def _appended_run(first: int, count: int) -> list[Any]:
        return list(map(_append_sql._appended, range(first, first + count)))  # type: ignore[attr-defined]


QUEUE = "Q-AAAAA00001"
VALUE = "x" * 100


def _routing() -> Callable[[], Any]:
    """One receive of 16 plain appends of one queue, routed on a broker hosting two groups."""

    async def handle_many(requests: list[Any], session: Any, answered: Any) -> None:
        return None

    def replica() -> Any:
        return SimpleNamespace(runs=SimpleNamespace(handle_many=handle_many))

    host = SimpleNamespace(
        primary=replica(),
        groups={"G-AAAAA": replica(), "G-BBBBB": replica()},
        meta=SimpleNamespace(map=None),
    )
    routing = GroupRouting(host)  # type: ignore[arg-type]
    requests = [(QUEUE, orjson.dumps(VALUE), VALUE) for _ in range(16)]
    return lambda: _done(routing.handle_many(requests, None, lambda answers: None))  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=9)
    rounds = parser.parse_args().repeat
    frame = orjson.dumps({"operation": "APPEND", "queue_name": QUEUE, "data": "x" * 90})
    assert len(frame) == 150
    values = [VALUE] * 100
    runs = {"type": "APPEND_RUNS", "runs": [[QUEUE, 1000, [VALUE] * 16]]}
    batch = {"type": "APPEND_BATCH", "queue_id": QUEUE, "data": values, "appended_ms": 1000}
    group = {"type": "COMMAND_GROUP", "commands": [batch] * 19}
    parts: list[tuple[str, Callable[[], Any], int, int, str]] = [
        (
            "decode_client_request, 150-byte APPEND",
            lambda: decode_client_request(frame),
            1,
            20_000,
            "us",
        ),
        ("dumps_values, 100 values of 100 bytes", lambda: dumps_values(values), 100, 2_000, "ns"),
        ("appended results, a run of 256", lambda: _appended_run(1, 256), 256, 500, "ns"),
        ("APPEND_RUNS decode, a run of 16", lambda: payload_from_obj(runs), 16, 5_000, "us"),
        ("group of 19 batches of 100, decode", lambda: payload_from_obj(group), 1_900, 50, "ns"),
        ("routing, a receive of 16 plain appends", _routing(), 16, 5_000, "us"),
    ]
    for name, part, per, number, unit in parts:
        cost = _best(part, per, number, rounds)
        shown = f"{cost * 1000:.0f} ns" if unit == "ns" else f"{cost:.3f} us"
        print(f"{name:45} {shown} per item")


if __name__ == "__main__":
    main()
