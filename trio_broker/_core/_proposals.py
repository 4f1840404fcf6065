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

from ._append_columns import AppendColumns, columns_group, joined_columns
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
        and cut into groups by slices, without a pair per request), except where a receive's
        plain appends were added as columns (:meth:`add_columns`): one item of
        ``_commands`` for the tokens of all of them."""
        self._columns = 0
        """Items of ``_commands`` that are columns (:meth:`add_columns`): while there is none,
        the two lists are in step and cut by :meth:`_cuts`."""
        self._waiting: dict[int, tuple[int, list[T]]] = {}
        """Log index -> (term proposed in, the tokens of that entry, in group order)."""
        self._answers: list[tuple[T, Outcome]] = []
        """Tokens a :meth:`propose_queued` settled (refused, or replaced) before something
        else stopped it (a bug, an interruption): no longer queued nor waiting, they are
        kept here until the next call returns them first, or ``take_queued``/``take_all``
        takes them, so that none is dropped unanswered."""
        self.grouped = 0
        """Entries proposed that hold more than one command."""

    def __len__(self) -> int:
        """Requests not yet settled: queued, or waiting for their entry (or for their answer
        to be handed out: ``_answers``)."""
        return (
            len(self._tokens)
            + len(self._answers)
            + sum(len(tokens) for _, tokens in self._waiting.values())
        )

    @property
    def queued(self) -> int:
        """Requests for the next :meth:`propose_queued`: to propose, or settled by an earlier
        one that stopped before it could return them."""
        return len(self._tokens) + len(self._answers)

    def waiting(self, index: int) -> tuple[int, list[T]] | None:
        """The term and the tokens waiting on ``index``, if any."""
        return self._waiting.get(index)

    def add(self, command: Any, token: T) -> None:
        """Queue one request's command until the next :meth:`propose_queued`."""
        if isinstance(command, CommandGroup | AppendColumns):
            raise ValueError("groups are made by the ledger; add commands")
        self._commands.append(command)
        self._tokens.append(token)

    def add_many(self, commands: list[Any], tokens: list[T]) -> None:
        """:meth:`add` for each command with its token, in order."""
        if len(commands) != len(tokens):
            raise ValueError(f"{len(commands)} commands for {len(tokens)} tokens")
        if any(issubclass(kind, CommandGroup | AppendColumns) for kind in set(map(type, commands))):
            raise ValueError("groups are made by the ledger; add commands")
        self._commands.extend(commands)
        self._tokens.extend(tokens)

    def add_columns(self, run: AppendColumns, tokens: list[T]) -> None:
        """Queue the plain appends of one receive held as columns (one queue, one stamp: a
        run of :class:`AppendColumns`), each with its token, in order: what :meth:`add_many`
        of its appends queues, without an ``AppendMessage`` per append. A group cut from
        such runs alone is proposed as the runs' columns joined (:func:`joined_columns`),
        read back by the entry's encoding and its apply as columns; a group that mixes them
        with other commands holds their appends, made then."""
        if len(run.queues) != 1:
            raise ValueError(f"a receive's columns are one run, not {len(run.queues)}")
        if len(run) != len(tokens):
            raise ValueError(f"{len(run)} appends for {len(tokens)} tokens")
        self._commands.append(run)
        self._tokens.extend(tokens)
        self._columns += 1

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

    def _pieces(self, items: list[Any]) -> list[list[Any]]:
        """``items`` (commands and runs of columns) cut into groups by the bounds, in order:
        each group its pieces, a run whole or a part of it. The cuts of :meth:`_cuts` of
        the same commands one by one (a run's append is bound as :func:`encoded_bound`
        bounds it, ``tests/test_columns13_ledger.py``): a group takes a command while it
        holds fewer than ``max_group`` and its bound stays within ``max_bytes`` (its first
        whatever its size); a run that fits is taken whole, with one sum of its values."""
        max_group, max_bytes, overhead = self.max_group, self.max_bytes, COMMAND_OVERHEAD
        groups: list[list[Any]] = []
        group: list[Any] = []
        count = size = 0
        queue: Any = _NO_QUEUE  # (the last run's queue, and its head: one bound per queue)
        head = 0
        for item in items:
            if type(item) is AppendColumns:
                datas = item.datas
                total = len(datas)
                whole = 0
                if max_bytes is not None:
                    if item.queues[0] != queue:
                        queue = item.queues[0]
                        head = overhead + text_bound(queue)
                    whole = total * head + sum(map(len, datas))
                if count + total <= max_group and (max_bytes is None or size + whole <= max_bytes):
                    group.append(item)
                    count += total
                    size += whole
                    continue
                start = 0  # (the run cut: each value by the rule below)
                for at, data in enumerate(datas):
                    bound = head + len(data)
                    if count >= max_group or (
                        count and max_bytes is not None and size + bound > max_bytes
                    ):
                        if at > start:
                            group.append(item.part(start, at))
                        groups.append(group)
                        group, count, size, start = [], 0, 0, at
                    count += 1
                    size += bound
                group.append(item.part(start, total) if start else item)
                continue
            bound = encoded_bound(item) if max_bytes is not None else 0
            if count >= max_group or (count and max_bytes is not None and size + bound > max_bytes):
                groups.append(group)
                group, count, size = [], 0, 0
            group.append(item)
            count += 1
            size += bound
        if group:
            groups.append(group)
        return groups

    @staticmethod
    def _payload(pieces: list[Any], prepare: Callable[[Any], Any] | None) -> tuple[Any, int]:
        """A group's payload from its pieces (:meth:`_pieces`) and how many commands it
        holds: runs of columns alone, their columns joined; else its commands, a run's
        appends made (and each passed through ``prepare`` if given), one command alone."""
        if prepare is None and all(type(piece) is AppendColumns for piece in pieces):
            joined = joined_columns(pieces)
            if len(joined) > 1:
                return columns_group(joined), len(joined)
        commands: list[Any] = []
        for piece in pieces:
            if type(piece) is AppendColumns:
                commands += piece.made()
            else:
                commands.append(piece)
        if prepare is not None:
            commands = [prepare(c) for c in commands]
        if len(commands) == 1:
            return commands[0], 1
        return CommandGroup(tuple(commands)), len(commands)

    def propose_queued(
        self,
        propose: Callable[[Any], tuple[int, int]],
        prepare: Callable[[Any], Any] | None = None,
    ) -> list[tuple[T, Outcome]]:
        """Propose the queued requests as groups with ``propose(payload) -> (term, index)`` (the
        core's ``RaftNode.propose``), each command first passed through ``prepare`` if given.
        Returns the tokens settled now: those of a refused group (with the core's
        :class:`~._raft.NotLeader`) and those of an earlier term's entry that a new one
        replaced (:class:`NotApplied`), after those an earlier call settled but could not
        return.

        When ``propose`` raises anything else (a bug, a cancellation, the simulator's
        interruption), the requests not yet proposed stay queued, in order, and those
        settled so far are kept (``_answers``): the next call returns them first (the
        simulator proposes again), else ``take_queued``/``take_all`` take them (the
        driver's recovery answers them). None is dropped unanswered."""
        if self._columns:
            return self._propose_pieces(propose, prepare)
        settled, self._answers = self._answers, []
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
            # proposed queued, in order, ahead of any newer one, and those settled kept:
            # their tokens stay for the next call or take_all (the driver's recovery answers
            # them), never dropped unanswered.
            self._commands[:0] = queued[done:]
            self._tokens[:0] = queued_tokens[done:]
            self._answers = settled
            raise
        return settled

    def _propose_pieces(
        self, propose: Callable[[Any], tuple[int, int]], prepare: Callable[[Any], Any] | None
    ) -> list[tuple[T, Outcome]]:
        """:meth:`propose_queued` of a queue that holds runs of columns: its groups cut by
        :meth:`_pieces`, each token matched to its command by the group's count."""
        settled, self._answers = self._answers, []
        queued, self._commands = self._commands, []
        queued_tokens, self._tokens = self._tokens, []
        columns, self._columns = self._columns, 0
        groups: list[list[Any]] | None = None
        done = at = 0  # (groups proposed, and their tokens)
        try:
            groups = self._pieces(queued)
            for pieces in groups:
                payload, count = self._payload(pieces, prepare)
                tokens = queued_tokens[at : at + count]
                try:
                    term, index = propose(payload)
                except NotLeader as exc:
                    settled.extend((token, exc) for token in tokens)
                    done, at = done + 1, at + count
                    continue
                self.grouped += count > 1
                settled.extend(self.wait_for(index, term, tokens))
                done, at = done + 1, at + count
        except BaseException:
            # (as propose_queued: the requests not yet proposed stay queued, in order, and
            # those settled are kept)
            rest = queued if groups is None else [p for g in groups[done:] for p in g]
            self._commands[:0] = rest
            self._tokens[:0] = queued_tokens[at:]
            self._columns += (
                columns if groups is None else sum(type(p) is AppendColumns for p in rest)
            )
            self._answers = settled
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
        """Remove the tokens not yet proposed (none of them is in the log), those settled by
        a :meth:`propose_queued` that stopped first (refused, or their entry replaced:
        nothing of theirs will be applied either)."""
        taken = [token for token, _ in self._answers]
        taken += self._tokens
        self._answers, self._tokens = [], []
        self._commands = []
        self._columns = 0
        return taken

    def take_all(self) -> list[T]:
        """Remove every token, queued ones first (the outcomes of all of them are unknown)."""
        taken = self.take_queued()
        for _, tokens in self._waiting.values():
            taken.extend(tokens)
        self._waiting.clear()
        return taken


__all__ = ["COMMAND_OVERHEAD", "MAX_GROUP", "NotApplied", "Proposals", "encoded_bound"]
