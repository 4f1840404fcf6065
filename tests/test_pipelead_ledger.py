"""The leader's ledger without a pair per request: a run's commands and tokens queued as two
lists, cut into groups by slices with a plain append's bound written out, and an applied
entry's proposals settled together (docs/performance-history.md, "The leader's ledger by
columns")."""

from __future__ import annotations

import random

import orjson
import pytest

from trio_broker._core._commands import (
    Ack,
    AppendMessage,
    CommandGroup,
    CreateQueue,
    GroupApplied,
    MessageAppended,
    ReadNext,
    text_bound,
)
from trio_broker._core._proposals import NotApplied, Proposals, encoded_bound
from trio_broker._core._work_commands import GroupNack, Publish, Record
from trio_broker._errors import BrokerError, ErrorCode
from trio_broker._protocol._entries import encode_payload
from trio_broker._runtime._pending import Capacity, Pending, PendingGroup
from trio_broker._runtime._proposing import Proposing


def reference_cuts(commands: list[object], max_group: int, max_bytes: int | None) -> list[int]:
    """Group sizes as the ledger cut them before: :func:`encoded_bound` for every command."""
    sizes, start = [], 0
    while start < len(commands):
        end, size = start, 0
        while end < len(commands) and end - start < max_group:
            size += encoded_bound(commands[end])
            if end > start and max_bytes is not None and size > max_bytes:
                break
            end += 1
        sizes.append(end - start)
        start = end
    return sizes


ID_CHARS = ("A", "é", "\u2028", "🙂", "\x00", "\x01", "\n", "\x1f", "\x7f", '"', "\\")
"""What a client may put in an id or a header: ASCII, non-ASCII (two and three UTF-8 bytes),
astral (four), control characters (orjson writes ``\\u00XX``, six bytes), quotes, backslashes."""


def random_text(rng: random.Random, prefix: str, longest: int) -> str:
    chars = rng.choice((("A",), ID_CHARS, ("\x01",), ("🙂",), ('"', "\\")))
    return prefix + "".join(rng.choice(chars) for _ in range(rng.randrange(1, longest)))


def random_command(rng: random.Random, queues: tuple[str, ...] = ()) -> object:
    queue = rng.choice(queues) if queues and rng.randrange(4) else random_text(rng, "Q-", 126)
    data = b'"' + b"x" * rng.choice((0, 10, 100, 3000, 20_000)) + b'"'
    kind = rng.randrange(10)
    if kind == 0:
        return CreateQueue(queue)
    if kind == 1:
        producer = random_text(rng, "", 128)
        return AppendMessage(queue, data, producer, rng.randrange(9), 5)
    if kind == 2:
        return ReadNext(random_text(rng, "", 128), queue)
    if kind == 3:
        return Ack(random_text(rng, "", 128), queue, rng.randrange(2**63))
    if kind == 4:
        headers = tuple(
            (random_text(rng, "", 64), random_text(rng, "", 1024)) for _ in range(rng.randrange(17))
        )
        records = tuple(
            Record(b"1", headers[: rng.randrange(17)]) for _ in range(rng.randrange(1, 9))
        )
        return Publish(queue, records, random_text(rng, "", 128), 1, 2**64 - 1, -(2**63))
    if kind == 5:
        return GroupNack(
            queue,
            random_text(rng, "", 128),
            random_text(rng, "", 128),
            tuple(2**64 - 1 for _ in range(rng.randrange(1000))),
            2**63,
            2**63,
            random_text(rng, "", 1024),
        )
    return AppendMessage(queue, data, None, None, rng.choice((None, 7)))


class Log:
    def __init__(self) -> None:
        self.last = 0
        self.payloads: list[object] = []

    def propose(self, payload: object) -> tuple[int, int]:
        self.last += 1
        self.payloads.append(payload)
        return 3, self.last


@pytest.mark.parametrize("seed", range(40))
def test_groups_are_cut_where_encoded_bound_cuts_them(seed: int) -> None:
    rng = random.Random(seed)
    commands = [random_command(rng) for _ in range(rng.randrange(1, 300))]
    max_group = rng.choice((1, 3, 16, 1024))
    max_bytes = rng.choice((None, 600, 5_000, 64_000))
    ledger: Proposals[int] = Proposals(max_group=max_group, max_bytes=max_bytes)
    cut = 0
    while cut < len(commands):  # queued as runs and as single requests, mixed
        step = rng.randrange(1, 20)
        run = commands[cut : cut + step]
        if len(run) == 1:
            ledger.add(run[0], cut)
        else:
            ledger.add_many(run, list(range(cut, cut + len(run))))
        cut += len(run)
    assert ledger.queued == len(commands)
    log = Log()
    assert ledger.propose_queued(log.propose) == []
    assert ledger.queued == 0
    sizes = [len(getattr(p, "commands", (p,))) for p in log.payloads]
    assert sizes == reference_cuts(commands, max_group, max_bytes)
    tokens = [ledger.waiting(index)[1] for index in range(1, log.last + 1)]  # type: ignore[index]
    assert [t for group in tokens for t in group] == list(range(len(commands)))


@pytest.mark.parametrize("seed", range(40))
def test_every_group_the_ledger_cuts_encodes_within_max_bytes(seed: int) -> None:
    """The cut's bound is a bound of the bytes written: every group of more than one command
    is encoded (the log's and REPLICATE's bytes) within ``max_bytes``, whatever characters
    the ids, the producer ids, the client ids and the headers hold."""
    rng = random.Random(seed)
    queues = tuple(random_text(rng, "Q-", 126) for _ in range(3))
    commands = [random_command(rng, queues) for _ in range(rng.randrange(50, 400))]
    max_bytes = rng.choice((2_000, 5_000, 64_000, 1 << 20))
    ledger: Proposals[int] = Proposals(max_bytes=max_bytes)
    ledger.add_many(commands, list(range(len(commands))))
    log = Log()
    ledger.propose_queued(log.propose)
    groups = [p for p in log.payloads if isinstance(p, CommandGroup)]
    assert sum(len(getattr(p, "commands", (p,))) for p in log.payloads) == len(commands)
    assert groups  # (the property below is about groups: some are cut)
    for group in groups:
        assert len(encode_payload(group)) <= max_bytes
    for command in commands:  # and one command's bound bounds its own entry
        assert len(encode_payload(command)) <= encoded_bound(command)


def test_text_bound_bounds_what_orjson_writes_for_every_character() -> None:
    """A character counted as one byte is written as one; any other, six at most. UTF-8's
    length goes by ranges of code points: all below 0x800, and every range's ends above."""
    ends = [0x7FF, 0x800, 0xD7FF, 0xE000, 0xFFFF, 0x10000, 0x10FFFF]
    for point in [*range(0x800), *range(0x800, 0x110000, 0x101), *ends]:
        if 0xD800 <= point < 0xE000:
            continue
        char = chr(point)
        written = len(orjson.dumps(char)) - 2
        assert written <= text_bound(char) <= 6
        assert text_bound(char * 3) >= 3 * written
    assert text_bound("Q-ABC") == 5 and text_bound('Q-"') == 18 and text_bound("é") == 6


def test_applied_columns_match_applied_pairs_and_refuse_a_short_result() -> None:
    ledger: Proposals[str] = Proposals()
    log = Log()
    for name in "abc":
        ledger.add(AppendMessage("Q", b"1", None, None, 1), name)
    ledger.propose_queued(log.propose)
    results = GroupApplied(tuple(MessageAppended(n) for n in range(3)))
    tokens, outcomes = ledger.applied_columns(1, 3, results)
    assert tokens == ["a", "b", "c"] and outcomes == results.results
    assert ledger.applied_columns(1, 3, results) == ([], ())  # settled once
    for name in "de":
        ledger.add(CreateQueue("Q"), name)
    ledger.propose_queued(log.propose)
    tokens, outcomes = ledger.applied_columns(2, 4, results)  # another term's entry
    assert tokens == ["d", "e"] and all(isinstance(o, NotApplied) for o in outcomes)
    ledger.add(CreateQueue("Q"), "f")
    ledger.add(CreateQueue("Q"), "g")
    ledger.propose_queued(log.propose)
    with pytest.raises(ValueError, match="3 results for 2 requests"):
        ledger.applied_columns(3, 3, results)
    # The refused entry's requests are still the ledger's: take_all finds them, none is lost.
    assert ledger.waiting(3) == (3, ["f", "g"]) and len(ledger) == 2
    assert ledger.take_all() == ["f", "g"] and len(ledger) == 0


class Driver(Proposing):
    """The parts of RaftDriver that settling reads."""

    def __init__(self) -> None:
        self._capacity = Capacity(10)

    def not_leader_error(self) -> BrokerError:  # pragma: no cover - not reached here
        raise AssertionError


def test_settle_applied_sets_each_outcome_and_gives_the_capacity_back() -> None:
    driver = Driver()
    driver._capacity.acquire_nowait(5)
    group, single = PendingGroup(4), Pending()
    tokens = [(group, 2), (group, 0), single, (group, 1), (group, 3)]
    outcomes = [MessageAppended(n) for n in range(5)]
    driver._settle_applied(tokens, outcomes)
    assert group.results == [outcomes[1], outcomes[3], outcomes[0], outcomes[4]]
    assert single.done and single.result == outcomes[2]
    assert driver._capacity.value == 10
    driver._settle_applied([], ())
    assert driver._capacity.value == 10


def test_settle_applied_answers_not_applied_as_a_retry_on_the_leader() -> None:
    driver = Driver()
    driver._capacity.acquire_nowait(2)
    group = PendingGroup(2)
    outcome = NotApplied("another leader's entry was committed")
    driver._settle_applied([(group, 0), (group, 1)], [outcome, outcome])
    assert all(
        isinstance(r, BrokerError) and r.code == ErrorCode.NOT_LEADER and "not applied" in str(r)
        for r in group.results
    )
    assert driver._capacity.value == 10
