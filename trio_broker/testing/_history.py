"""A Jepsen-style history of queue operations and the checker that judges it.

Clients record every operation they attempt, in the style of Jepsen's histories::

    history = History()
    op = history.invoke("C-W0001", "append", queue_id, value)
    ...                                   # send it
    history.ok(op, seq=15)                # the broker said so
    history.fail(op, "NOT_LEADER")        # the broker said it was not applied
    history.info(op, "timed out")         # nobody knows: it may or may not have been applied

After the faults are healed, a fresh client reads every queue from the start and the harness
stores that as the final state (:meth:`History.set_final`); :meth:`History.check` then judges the
whole history against the broker's promises (``docs/reliability.md``):

- **lost**: every acknowledged append is in the final queue, at the sequence number it was
  given, with its value;
- **phantom**: nothing read by anyone, and nothing in the final queue, was never appended;
- **failed-present**: an append that failed definitively (``NOT_LEADER``, ...) never appears;
- **duplicate**: a value is stored at most once (every value appended is unique; an append of
  unknown outcome may appear once or not at all);
- **read-mismatch**: a read's ``(sequence_num, data)`` is the final queue's entry at that number;
- **read-order**: each client's reads of a queue are strictly increasing (no repeat, no going
  back);
- **read-gap**: a client skips a message only where it had a read of unknown outcome, which may
  have moved its position without telling it; each such read explains at most one skipped
  message, at any later point (a request can be applied long after the client gave up on it);
  reads that failed definitively explain nothing;
- **stale-empty-read**: "no messages" is wrong if an append acknowledged before the read was sent
  lies beyond every position the client could have been at;
- **read-before-append**: a read returns a value only after its append was sent;
- **append-order**: an append acknowledged before another was sent has the smaller sequence
  number (acknowledged appends are linearizable);
- **final-incomplete**: the final read of a queue holds sequence numbers 1..N, each once.

The checker is pure: no trio, no clock of its own. Times are whatever the recorder's ``clock``
returns (``time.monotonic`` by default; unit tests pass their own numbers).
"""

from __future__ import annotations

import enum
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import orjson

__all__ = ["Anomaly", "CheckResult", "History", "Op", "OpType", "check", "value_key"]


class OpType(enum.StrEnum):
    INVOKE = "invoke"
    """Sent (or about to be), no outcome yet; judged like ``info`` if it never completes."""
    OK = "ok"
    """The broker acknowledged it."""
    FAIL = "fail"
    """Definitely not applied (an error other than ``INTERNAL`` without ``"outcome": "unknown"``,
    or the request never left the client)."""
    INFO = "info"
    """Indeterminate: a lost connection, a timeout, ``"outcome": "unknown"``, ``INTERNAL``."""


_NOTHING = object()


@attrs.define(eq=False)
class Op:
    """One operation of one client (``process``: its client id), from invocation to outcome."""

    index: int
    process: str
    f: str
    """``"append"`` or ``"read"``."""
    queue: str
    value: Any
    """The data appended (appends only)."""
    invoke_time: float
    type: OpType = OpType.INVOKE
    complete_time: float | None = None
    seq: int | None = None
    """An acknowledged append's sequence number; an acknowledged read's, or None for "no
    messages"."""
    data: Any = None
    """What an acknowledged read returned."""
    error: str | None = None

    @property
    def empty_read(self) -> bool:
        return self.f == "read" and self.type is OpType.OK and self.seq is None

    @property
    def indeterminate(self) -> bool:
        return self.type in (OpType.INFO, OpType.INVOKE)

    def to_json(self) -> dict[str, Any]:
        record = {
            "index": self.index,
            "process": self.process,
            "f": self.f,
            "queue": self.queue,
            "type": str(self.type),
            "invoke": round(self.invoke_time, 6),
            "complete": None if self.complete_time is None else round(self.complete_time, 6),
        }
        if self.f == "append":
            record["value"] = self.value
        if self.seq is not None:
            record["seq"] = self.seq
        if self.f == "read" and self.type is OpType.OK:
            record["data"] = self.data
        if self.error is not None:
            record["error"] = self.error
        return record

    def __str__(self) -> str:
        return orjson.dumps(self.to_json()).decode()


@attrs.frozen
class Anomaly:
    kind: str
    message: str
    ops: tuple[int, ...] = ()
    """Indices of the operations involved."""

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


@attrs.frozen
class CheckResult:
    anomalies: tuple[Anomaly, ...]
    counts: dict[str, int]
    """Operations by ``f:type`` (``append:ok``, ``read:info``...), for the report."""

    @property
    def valid(self) -> bool:
        return not self.anomalies

    @property
    def kinds(self) -> set[str]:
        return {a.kind for a in self.anomalies}

    def report(self, history: History | None = None, limit: int = 20) -> str:
        lines = [f"operations: {dict(sorted(self.counts.items()))}"]
        if self.valid:
            lines.append("no anomalies")
            return "\n".join(lines)
        lines.append(f"{len(self.anomalies)} anomalies:")
        for anomaly in self.anomalies[:limit]:
            lines.append(f"  {anomaly}")
            if history is not None:
                for index in anomaly.ops[:6]:
                    lines.append(f"      {history.ops[index]}")
        if len(self.anomalies) > limit:
            lines.append(f"  ... and {len(self.anomalies) - limit} more")
        return "\n".join(lines)


def value_key(value: Any) -> bytes:
    """A JSON value as bytes: equal keys mean equal values, types included (1 is not 1.0)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


class History:
    """The record of every operation every client attempted, plus the final queues.

    Not thread-safe; trio tasks of one program share one freely.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.ops: list[Op] = []
        self.final: dict[str, list[tuple[int, Any]]] = {}

    # -- recording ------------------------------------------------------------------------------

    def invoke(
        self, process: str, f: str, queue: str, value: Any = None, *, at: float | None = None
    ) -> Op:
        if f not in ("append", "read"):
            raise ValueError(f"unknown operation {f!r}")
        op = Op(
            index=len(self.ops),
            process=process,
            f=f,
            queue=queue,
            value=value,
            invoke_time=self.clock() if at is None else at,
        )
        self.ops.append(op)
        return op

    def _complete(self, op: Op, kind: OpType, at: float | None) -> None:
        if op.type is not OpType.INVOKE:
            raise ValueError(f"operation {op.index} already completed as {op.type}")
        op.type = kind
        op.complete_time = self.clock() if at is None else at

    def ok(
        self, op: Op, seq: int | None = None, data: Any = _NOTHING, *, at: float | None = None
    ) -> Op:
        """Acknowledged: an append with its ``seq``; a read with ``seq`` and ``data``, or with
        neither for "no messages"."""
        if op.f == "append" and seq is None:
            raise ValueError("an acknowledged append has a sequence number")
        if op.f == "read" and (seq is None) != (data is _NOTHING):
            raise ValueError("an acknowledged read has both seq and data, or neither")
        self._complete(op, OpType.OK, at)
        op.seq = seq
        op.data = None if data is _NOTHING else data
        return op

    def fail(self, op: Op, error: str, *, at: float | None = None) -> Op:
        self._complete(op, OpType.FAIL, at)
        op.error = error
        return op

    def info(self, op: Op, error: str, *, at: float | None = None) -> Op:
        self._complete(op, OpType.INFO, at)
        op.error = error
        return op

    def set_final(self, queue: str, messages: Iterable[tuple[int, Any]]) -> None:
        """Every message of ``queue`` as a fresh client read it after the faults were healed."""
        self.final[queue] = [(seq, data) for seq, data in messages]

    # -- judging --------------------------------------------------------------------------------

    def check(self) -> CheckResult:
        return check(self.ops, self.final)

    def dump(self, path: Path | str) -> Path:
        """Write the history (one JSON object per line, then the final queues) to ``path``."""
        path = Path(path)
        with path.open("wb") as out:
            for op in self.ops:
                out.write(orjson.dumps(op.to_json()) + b"\n")
            for queue, messages in self.final.items():
                out.write(orjson.dumps({"final": queue, "messages": messages}) + b"\n")
        return path


def check(ops: Sequence[Op], final: dict[str, list[tuple[int, Any]]]) -> CheckResult:
    """Judge a history; see the module docstring for what each anomaly kind means."""
    anomalies: list[Anomaly] = []
    add = anomalies.append
    counts = Counter(f"{op.f}:{op.type}" for op in ops)

    appends: dict[tuple[str, bytes], Op] = {}
    for op in ops:
        if op.f != "append":
            continue
        key = (op.queue, value_key(op.value))
        if key in appends:
            raise ValueError(
                f"the checker needs unique values: ops {appends[key].index} and {op.index} "
                f"both append {op.value!r} to {op.queue}"
            )
        appends[key] = op

    # The final queues: numbered 1..N, each value at most once, each value appended by someone.
    final_at: dict[str, dict[int, Any]] = {}
    stored_seq: dict[int, int] = {}
    """append op index -> the sequence number its value is stored at."""
    for queue, messages in final.items():
        seqs = [seq for seq, _ in messages]
        if seqs != list(range(1, len(seqs) + 1)):
            add(Anomaly("final-incomplete", f"{queue}: final read holds {_ranges(seqs)}"))
        at = final_at[queue] = {}
        where: dict[bytes, list[int]] = defaultdict(list)
        for seq, data in messages:
            at.setdefault(seq, data)
            where[value_key(data)].append(seq)
        for key, places in where.items():
            origin = appends.get((queue, key))
            if origin is None:
                add(
                    Anomaly(
                        "phantom",
                        f"{queue}: {orjson.dumps(final_at[queue][places[0]]).decode()} stored at "
                        f"{places} was never appended",
                    )
                )
                continue
            if len(places) > 1:
                add(
                    Anomaly(
                        "duplicate",
                        f"{queue}: {origin.value!r} stored {len(places)} times, at {places}",
                        (origin.index,),
                    )
                )
            if origin.type is OpType.FAIL:
                add(
                    Anomaly(
                        "failed-present",
                        f"{queue}: append of {origin.value!r} failed ({origin.error}) but is "
                        f"stored at {places}",
                        (origin.index,),
                    )
                )
            stored_seq[origin.index] = places[0]

    # Acknowledged appends: present, at their number, once.
    for op in ops:
        if op.f != "append" or op.type is not OpType.OK:
            continue
        at = final_at.get(op.queue)
        if at is None:
            continue  # no final read of that queue: nothing to compare with
        if op.seq not in at:
            add(
                Anomaly(
                    "lost",
                    f"{op.queue}: acknowledged append of {op.value!r} at {op.seq} is missing "
                    f"(the final queue has {len(at)} messages)",
                    (op.index,),
                )
            )
        elif value_key(at[op.seq]) != value_key(op.value):
            add(
                Anomaly(
                    "lost",
                    f"{op.queue}: acknowledged append of {op.value!r} at {op.seq}, but "
                    f"{at[op.seq]!r} is stored there"
                    + (
                        f" (and {op.value!r} at {stored_seq[op.index]})"
                        if op.index in stored_seq
                        else ""
                    ),
                    (op.index,),
                )
            )

    # Acknowledged appends are linearizable: acknowledged before another was sent -> smaller seq.
    by_queue: dict[str, list[tuple[int, Op]]] = defaultdict(list)
    for op in ops:
        if op.f != "append":
            continue
        seq = op.seq if op.type is OpType.OK else stored_seq.get(op.index)
        if seq is not None:
            by_queue[op.queue].append((seq, op))
    for queue, placed in by_queue.items():
        placed.sort(key=lambda pair: pair[0])
        earliest_ack: Op | None = None
        """Among the acknowledged appends with a larger seq, the first acknowledged."""
        for _seq, op in reversed(placed):
            if earliest_ack is not None and earliest_ack.complete_time < op.invoke_time:
                add(
                    Anomaly(
                        "append-order",
                        f"{queue}: {earliest_ack.value!r} was acknowledged at "
                        f"{earliest_ack.seq} before {op.value!r} was sent, which got "
                        f"{_seq}",
                        (earliest_ack.index, op.index),
                    )
                )
            if op.type is OpType.OK and (
                earliest_ack is None or op.complete_time < earliest_ack.complete_time
            ):
                earliest_ack = op

    # Reads, against the appends and the final queues.
    for op in ops:
        if op.f != "read" or op.type is not OpType.OK or op.seq is None:
            continue
        origin = appends.get((op.queue, value_key(op.data)))
        if origin is None:
            add(
                Anomaly(
                    "phantom",
                    f"{op.queue}: {op.process} read {op.data!r} at {op.seq}, never appended",
                    (op.index,),
                )
            )
            continue
        if origin.type is OpType.FAIL:
            add(
                Anomaly(
                    "failed-present",
                    f"{op.queue}: {op.process} read {op.data!r} at {op.seq}, whose append "
                    f"failed ({origin.error})",
                    (origin.index, op.index),
                )
            )
        if origin.invoke_time > op.complete_time:
            add(
                Anomaly(
                    "read-before-append",
                    f"{op.queue}: {op.process} read {op.data!r} before it was appended",
                    (origin.index, op.index),
                )
            )
        if origin.type is OpType.OK and origin.seq != op.seq:
            add(
                Anomaly(
                    "read-mismatch",
                    f"{op.queue}: {op.process} read {op.data!r} at {op.seq}, acknowledged at "
                    f"{origin.seq}",
                    (origin.index, op.index),
                )
            )
        at = final_at.get(op.queue)
        if at is not None and (op.seq not in at or value_key(at[op.seq]) != value_key(op.data)):
            add(
                Anomaly(
                    "read-mismatch",
                    f"{op.queue}: {op.process} read {op.data!r} at {op.seq}; the final queue "
                    f"has {at.get(op.seq, '<nothing>')!r} there",
                    (op.index,),
                )
            )

    # Each client's reads of each queue, in its own (sequential) order.
    reads: dict[tuple[str, str], list[Op]] = defaultdict(list)
    for op in ops:
        if op.f == "read":
            reads[(op.process, op.queue)].append(op)
    acked_appends: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.f == "append" and op.type is OpType.OK:
            acked_appends[op.queue].append(op)
    for (process, queue), sequence in reads.items():
        sequence.sort(key=lambda op: op.invoke_time)
        position = 0
        """The last sequence number this client was told it read."""
        last: Op | None = None
        unexplained = 0
        """Reads of unknown outcome so far that have not yet been used to explain a skip."""
        for op in sequence:
            if op.indeterminate:
                unexplained += 1
                continue
            if op.type is OpType.FAIL:
                continue
            if op.seq is None:
                # "No messages": the position is at most `position + unexplained`, so every
                # message acknowledged before this read was sent lies at or below that.
                bound = position + unexplained
                for append in acked_appends.get(queue, ()):
                    if append.seq > bound and append.complete_time < op.invoke_time:
                        add(
                            Anomaly(
                                "stale-empty-read",
                                f"{queue}: {process} was told no messages, but {append.value!r} "
                                f"was acknowledged at {append.seq} before, beyond its position "
                                f"(at most {bound})",
                                (append.index, op.index),
                            )
                        )
                        break
                continue
            if op.seq <= position:
                add(
                    Anomaly(
                        "read-order",
                        f"{queue}: {process} read {op.seq} after {position}"
                        + (" (a repeat)" if op.seq == position else ""),
                        tuple(o.index for o in (last, op) if o is not None),
                    )
                )
                continue
            skipped = op.seq - position - 1
            if skipped > unexplained:
                add(
                    Anomaly(
                        "read-gap",
                        f"{queue}: {process} read {op.seq} after {position}, skipping "
                        f"{skipped} messages with only {unexplained} reads of unknown outcome "
                        "to explain them",
                        tuple(o.index for o in (last, op) if o is not None),
                    )
                )
                unexplained = 0
            else:
                unexplained -= skipped
            position = op.seq
            last = op

    return CheckResult(tuple(anomalies), dict(counts))


def _ranges(seqs: Sequence[int]) -> str:
    """``[1, 2, 3, 5, 5]`` -> ``"1-3, 5, 5"`` (in order, for messages about numbering)."""
    if not seqs:
        return "nothing"
    parts = []
    start = prev = seqs[0]
    for seq in [*seqs[1:], None]:
        if seq is not None and seq == prev + 1:
            prev = seq
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        if seq is not None:
            start = prev = seq
    return ", ".join(parts)
