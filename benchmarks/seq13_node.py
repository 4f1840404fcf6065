"""A broker process whose ``Store.save`` calls are counted (``benchmarks.seq13_readies
--processes`` starts three): ``python -m benchmarks.seq13_node OUT node --port ...``.

Runs ``python -m trio_broker`` with the arguments after OUT, its store's saves wrapped to
record, per save, (entries persisted, committed entries applied, the commands those hold,
entries persisted that are not a group, committed entries that are not a group); written to
OUT as JSON once the broker stops (SIGTERM). Why: what a replica's transactions hold depends
on the timing of three real processes, which three brokers in one process do not have.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from trio_broker._storage import _store


def _commands(entry: Any) -> int:
    commands = getattr(entry.payload, "commands", None)
    return 1 if commands is None else len(commands)


def _lone(entries: Any) -> int:
    return sum(1 for e in entries if getattr(e.payload, "commands", None) is None)


def main() -> None:
    out = Path(sys.argv[1])
    rows: list[tuple[int, int, int, int, int]] = []
    save = _store.Store.save

    def counted(self: Any, *args: Any, **kw: Any) -> Any:
        entries = kw.get("entries") or ()
        committed = kw.get("committed") or ()
        commands = sum(map(_commands, committed))
        rows.append((len(entries), len(committed), commands, _lone(entries), _lone(committed)))
        return save(self, *args, **kw)

    _store.Store.save = counted  # type: ignore[method-assign]
    from trio_broker._cli._main import main as broker_main

    try:
        broker_main(sys.argv[2:])
    finally:
        out.write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
