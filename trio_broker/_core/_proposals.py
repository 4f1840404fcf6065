"""The leader's proposals ledger: which requests wait for which log entry.

Requests a leader takes between two Readys wait in a short queue; at its next Ready they become
log entries, as few as the bounds allow (:data:`MAX_GROUP` commands, about ``max_bytes`` of
encoded data each): one :class:`~._commands.CommandGroup` per entry (proposal batching). Each
entry's requests then wait on its ``(index, term)`` until that index is applied here:

- the entry applied at that index has the same term: it is theirs, and each request gets its
  own result (a group's results are in its commands' order);
- it has another term, or this leader's log put an entry of a later term at that index before
  it was applied: theirs was never committed (by leader completeness), so it was *not applied*;
- the core refused the proposal (this broker no longer leads, or hands its leadership over):
  nothing was appended, and the refusal says where to retry.

Requests are opaque *tokens* here (the runtime's trio events, the simulator's client request
ids), so the driver and the simulator share this logic and the simulator checks the code that
ships. Pure: no I/O, no clock; the caller settles each token with the outcome it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar

import attrs

from ._commands import AppendMessage, CommandGroup, GroupApplied, ReadNext, text_bound
from ._raft import NotLeader

T = TypeVar("T")

MAX_GROUP = 1024
"""Commands in one proposal group (one log entry)."""
COMMAND_OVERHEAD = 256
"""More than the JSON a command adds to its strings, its data and what its tuples hold: its type,
its field names, its numbers."""
_NO_QUEUE: Any = object()
"""No queue yet in :meth:`Proposals._cuts`: no ``queue_id`` is this."""


def encoded_bound(command: Any) -> int:
    """An upper bound of a command's size in a log entry. A group stays under ``max_bytes`` by
    this bound, so that a REPLICATE of the core's 64 entries stays within a peer frame.

    :data:`COMMAND_OVERHEAD` holds the type tag, the field names and every number, bool or
    None of the command's own fields; on top of it come its strings by :func:`text_bound`
    (orjson escapes some characters, and writes others as several UTF-8 bytes), its message
    values (``bytes``, embedded as they are) by their length, and whatever a tuple or a nested
    record holds (records, headers, ranges, a policy) by :func:`_nested_bound`.
    ``tests/test_pipelead_ledger.py`` holds every group the ledger cuts to its bound."""
    kind = type(command)
    if kind is ReadNext:  # (a single READ, the most frequent with appends: no data)
        queue_id, client_id = command.queue_id, command.client_id
        if type(queue_id) is str and type(client_id) is str:
            return COMMAND_OVERHEAD + text_bound(queue_id) + text_bound(client_id)
    if kind is CommandGroup:
        return COMMAND_OVERHEAD + sum(map(encoded_bound, command.commands))
    size = COMMAND_OVERHEAD
    for field in kind.__attrs_attrs__:
        value = getattr(command, field.name)
        cls = type(value)
        if cls is str:
            size += text_bound(value)
        elif cls is bytes:
            size += len(value)
        elif value is not None and cls not in (int, bool, float):
            size += _nested_bound(value)
    return size


_KEY = 4
"""A field name's quotes, its colon and the comma after its value."""


def _nested_bound(value: Any) -> int:
    """An upper bound of what a value inside a command's field writes, its comma included."""
    cls = type(value)
    if cls is str:
        return text_bound(value) + 3
    if cls is bytes:
        return len(value) + 1
    if value is None or cls is bool or cls is int:
        return 21  # (orjson's integers: 20 characters at most, as -2**63 and 2**64 - 1)
    if cls is tuple or cls is list or cls is frozenset or cls is set:  # (a set: as a list)
        return 3 + sum(map(_nested_bound, value))
    if cls is dict:
        return 3 + sum(_nested_bound(k) + _nested_bound(v) for k, v in value.items())
    fields = getattr(cls, "__attrs_attrs__", None)
    if fields is not None:
        return 3 + sum(len(f.name) + _KEY + _nested_bound(getattr(value, f.name)) for f in fields)
    return 6 * len(str(value)) + 3  # (a float: its digits)


@attrs.frozen
class NotApplied:
    """The outcome of a request whose entry was never committed: nothing was applied."""

    reason: str


Outcome = Any
"""What a token is settled with: the applied result, :class:`NotApplied`, or the core's
:class:`~._raft.NotLeader` refusal (``LeadershipTransferring`` among them)."""


class Proposals(Generic[T]):
    """The requests of one leader, from the moment it takes them until each is settled."""

    def __init__(self, *, max_group: int = MAX_GROUP, max_bytes: int | None = None) -> None:
        if max_group < 1:
            raise ValueError(f"max_group must be at least 1, not {max_group}")
        self.max_group = max_group
        self.max_bytes = max_bytes
        self._commands: list[Any] = []
        self._tokens: list[T] = []
        """The queued requests: commands and their tokens, two lists in step (a run is added
        and cut into groups by slices, without a pair per request)."""
        self._waiting: dict[int, tuple[int, list[T]]] = {}
        """Log index -> (term proposed in, the tokens of that entry, in group order)."""
        self.grouped = 0
        """Entries proposed that hold more than one command."""

    def __len__(self) -> int:
        """Requests not yet settled: queued, or waiting for their entry."""
        return len(self._commands) + sum(len(tokens) for _, tokens in self._waiting.values())

    @property
    def queued(self) -> int:
        return len(self._commands)

    def waiting(self, index: int) -> tuple[int, list[T]] | None:
        """The term and the tokens waiting on ``index``, if any."""
        return self._waiting.get(index)

    def add(self, command: Any, token: T) -> None:
        """Queue one request's command until the next :meth:`propose_queued`."""
        if isinstance(command, CommandGroup):
            raise ValueError("groups are made by the ledger; add commands")
        self._commands.append(command)
        self._tokens.append(token)

    def add_many(self, commands: list[Any], tokens: list[T]) -> None:
        """:meth:`add` for each command with its token, in order."""
        if len(commands) != len(tokens):
            raise ValueError(f"{len(commands)} commands for {len(tokens)} tokens")
        if any(issubclass(kind, CommandGroup) for kind in set(map(type, commands))):
            raise ValueError("groups are made by the ledger; add commands")
        self._commands.extend(commands)
        self._tokens.extend(tokens)

    def _cuts(self, commands: list[Any]) -> Iterator[tuple[int, int]]:
        """``commands`` cut into groups by the bounds, in order: each group's ``(start, end)``.

        A plain append's bound is :func:`encoded_bound`'s sum written out (no ``getattr`` and
        no call per append: what a leader groups under load), its queue's :func:`text_bound`
        taken once per run of one queue (equal names, not only the same object: each request's
        name is an object of its own); ``tests/test_pipelead_ledger.py`` holds the cuts to
        those of :func:`encoded_bound` for every command."""
        count, max_group, max_bytes = len(commands), self.max_group, self.max_bytes
        append_message, overhead = AppendMessage, COMMAND_OVERHEAD
        queue: Any = _NO_QUEUE
        head = 0
        start = 0
        while start < count:
            limit = min(count, start + max_group)
            if max_bytes is None:
                yield start, limit
                start = limit
                continue
            end, size = start, 0
            while end < limit:
                c = commands[end]
                if type(c) is append_message and c.producer_id is None:
                    if c.queue_id is not queue and type(c.queue_id) is str:
                        if c.queue_id != queue:  # (an equal name, another object: same bound)
                            head = overhead + text_bound(c.queue_id)
                        queue = c.queue_id
                    if c.queue_id is queue:
                        size += head + len(c.data)
                    else:
                        size += encoded_bound(c)
                else:
                    size += encoded_bound(c)
                if end > start and size > max_bytes:
                    break
                end += 1
            yield start, end
            start = end

    def propose_queued(
        self,
        propose: Callable[[Any], tuple[int, int]],
        prepare: Callable[[Any], Any] | None = None,
    ) -> list[tuple[T, Outcome]]:
        """Propose the queued requests as groups with ``propose(payload) -> (term, index)`` (the
        core's ``RaftNode.propose``), each command first passed through ``prepare`` if given.
        Returns the tokens settled now: those of a refused group (with the core's
        :class:`~._raft.NotLeader`) and those of an earlier term's entry that a new one
        replaced (:class:`NotApplied`)."""
        settled: list[tuple[T, Outcome]] = []
        queued, self._commands = self._commands, []
        queued_tokens, self._tokens = self._tokens, []
        done = 0
        try:
            for start, end in self._cuts(queued):
                commands = queued[start:end]
                if prepare is not None:
                    commands = [prepare(c) for c in commands]
                payload = commands[0] if len(commands) == 1 else CommandGroup(tuple(commands))
                tokens = queued_tokens[start:end]
                try:
                    term, index = propose(payload)
                except NotLeader as exc:
                    settled.extend((token, exc) for token in tokens)
                    done = end
                    continue
                self.grouped += len(tokens) > 1
                settled.extend(self.wait_for(index, term, tokens))
                done = end
        except BaseException:
            # Anything else that fails (a bug, a cancellation) leaves the requests not yet
            # proposed queued, in order, ahead of any newer one: their tokens stay for
            # take_all (the driver's recovery answers them), never dropped unanswered.
            self._commands[:0] = queued[done:]
            self._tokens[:0] = queued_tokens[done:]
            raise
        return settled

    def wait_for(self, index: int, term: int, tokens: list[T]) -> list[tuple[T, Outcome]]:
        """Register the tokens of the entry this leader just appended at ``index`` in ``term``.
        Tokens still waiting there are from an earlier term whose entry this leader's log
        replaced: by leader completeness that entry was never committed. Returns them, settled
        as not applied."""
        replaced = self._waiting.pop(index, None)
        self._waiting[index] = (term, tokens)
        if replaced is None:
            return []
        outcome = NotApplied("another leader's entry took its place")
        return [(token, outcome) for token in replaced[1]]

    def applied(self, index: int, term: int, result: Any) -> list[tuple[T, Outcome]]:
        """The entry at ``index`` of ``term`` was applied with ``result``: settle the tokens that
        waited on that index (each its own result from a group's, else ``result``)."""
        tokens, outcomes = self.applied_columns(index, term, result)
        return list(zip(tokens, outcomes, strict=True))

    def applied_columns(
        self, index: int, term: int, result: Any
    ) -> tuple[list[T], Sequence[Outcome]]:
        """:meth:`applied` as two sequences in step, the tokens and their outcomes (a group's
        results as they are, no pair per request): all :class:`NotApplied` when the entry
        applied there is another leader's, else results of the apply."""
        waiting = self._waiting.get(index)
        if waiting is None:
            return [], ()
        proposed_in, tokens = waiting
        if proposed_in != term:
            del self._waiting[index]
            return tokens, [NotApplied("another leader's entry was committed")] * len(tokens)
        if isinstance(result, GroupApplied):
            if len(result.results) != len(tokens):  # (checked first: the tokens stay, for take_all)
                raise ValueError(f"{len(result.results)} results for {len(tokens)} requests")
            del self._waiting[index]
            return tokens, result.results
        del self._waiting[index]
        return tokens, [result] * len(tokens)

    def take_through(self, index: int) -> list[T]:
        """Remove the tokens waiting on an index up to ``index`` (a snapshot replaced those
        entries: whether they were applied is not known here)."""
        taken: list[T] = []
        for at in [i for i in self._waiting if i <= index]:
            taken.extend(self._waiting.pop(at)[1])
        return taken

    def take_queued(self) -> list[T]:
        """Remove the tokens not yet proposed (none of them is in the log)."""
        taken, self._tokens = self._tokens, []
        self._commands = []
        return taken

    def take_all(self) -> list[T]:
        """Remove every token, queued ones first (the outcomes of all of them are unknown)."""
        taken, self._tokens = self._tokens, []
        self._commands = []
        for _, tokens in self._waiting.values():
            taken.extend(tokens)
        self._waiting.clear()
        return taken


__all__ = ["COMMAND_OVERHEAD", "MAX_GROUP", "NotApplied", "Proposals", "encoded_bound"]
