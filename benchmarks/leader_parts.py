"""The leader's per-request Python for a receive of pipelined APPENDs, part by part.

    python -m benchmarks.leader_parts [--run 16] [--repeat 9]
    python -m benchmarks.leader_parts --run 1    (one request in flight: a receive of one)

Each part is timed on its own thread's CPU (``time.thread_time``, best of ``--repeat``), so the
figures hold on a machine shared with other work, and divided by the APPENDs of the run (one
receive of ``--run`` 150-byte APPENDs of the original contract, as the bench's pipelined
workload sends them):

- **read**: the receive's frames cut by the ``FrameDecoder``, each request's bytes taken from
  the buffer budget (as the connection's reader does), and each frame decoded;
- **decide**: ``Runs.handle_many`` with a stand-in driver whose ``propose_many`` makes the
  group (no ledger): each APPEND checked into its command, the answers made and given;
- **settle**: each outcome set in the group by index (the driver's ``_settle_applied``);
- **answer**: the answers queued in the outbox and taken by the writer (``_take``: frames,
  the metrics' tally), as one write; what ``handle_many`` gave (a list of answers, or one
  ``GroupRun`` for the whole run) queued as the connection queues it.

With ``--run 1`` (a receive of one frame, as at 100 connections x 1 in flight), the parts
are the same on the lone request's path: **read** as the reader cuts a receive of one frame
(``FrameDecoder.take_whole`` where the tree has it, else ``feed`` and ``next_frame`` until
None), charges it and decodes it; **decide** ``Runs.lone_append`` of the one request where the
tree has it (what a connection asks first since docs/performance-history.md, "The leader's CPU per
request (ninth round)": no coroutine), else ``Runs.handle_many`` of it (``_handle_one``), its
command proposed to a stand-in ``propose_now`` or ``propose``; **settle** its
``Pending`` set; **answer** its answer queued (``Outbox.put``), taken by the writer before
its outcome is known (None: the reader's kick after the receive), its ``Pending`` set (the
settle part again), and taken by the writer. Then, apart (not in "together"), the driver's
``propose`` of its command (``Proposing.propose_now`` where the tree has it, else
``Proposing.propose``: the capacity's unit, the leader's and the disk's checks, the
``Pending``), on a stand-in ledger that keeps nothing. Neither part counts the connection's
own coroutine (``decide_run``) and the broker's (``Broker._handle_many``) that the code
before ran per lone request: ``benchmarks.connection_path --window 1`` measures the whole.

What it leaves out: the socket calls, the driver and storage, the peer links (see
``benchmarks.connection_path`` for the connection path with its socket calls, and the bench
for the whole). Runs on the code before a change too (``PYTHONPATH`` to an export of it), so
that two trees can be compared part by part, alternated.

Every part runs under the node's garbage collector settings (``_cli._node.GC_THRESHOLDS``, and
what the imports built frozen, as the node freezes what its start-up built), imported from
where the node sets them, not copied: the leader runs at those, and at Python's defaults a
young collection every 700 net allocations would charge each part with collections the
broker does not make (docs/performance-history.md, "Per-replica Python": 1.28 -> 0.18 us of
collections per append).
"""

from __future__ import annotations

import argparse
import gc
import random
import time
from collections.abc import Callable
from itertools import repeat
from typing import Any

import orjson

from benchmarks.connection_path import APPEND, LeaderNode, stand_in_runs
from trio_broker._cli._node import GC_THRESHOLDS
from trio_broker._core import _commands as cmd
from trio_broker._protocol import _codec, encode_frame
from trio_broker._protocol._framing import FrameDecoder
from trio_broker._runtime._config import BrokerConfig
from trio_broker._runtime._limits import BufferBudget
from trio_broker._runtime._metrics import BrokerMetrics
from trio_broker._runtime._outbox import Outbox
from trio_broker._runtime._pending import Capacity, Pending, PendingGroup, settling
from trio_broker._runtime._proposing import Proposing
from trio_broker._runtime._runs import AppendAnswer
from trio_broker._runtime._writer import AnswerWriter


class _Driver:
    max_group = 1024
    node = LeaderNode()
    group: PendingGroup
    pending: Pending

    async def propose(self, command: Any) -> Pending:
        self.pending = Pending()
        return self.pending

    def propose_now(self, command: Any) -> Pending:
        self.pending = Pending()
        return self.pending

    async def propose_many(self, commands: list[Any]) -> PendingGroup:
        self.group = PendingGroup(len(commands))
        return self.group

    propose_columns = propose_many  # (a receive held as columns: only its count is read)


class _Socket:
    def send_now(self, data: bytes) -> int:
        return len(data)


def _done(coroutine: Any) -> None:
    """Run a coroutine that never waits (the stand-in driver never does)."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    raise AssertionError("the run waited")


def _best(part: Callable[[], Any], per: int, number: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.thread_time()
        for _ in range(number):
            part()
        best = min(best, time.thread_time() - started)
    return best / number / per * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=int, default=16, help="APPENDs per receive")
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--number", type=int, default=2000, help="runs per timing")
    args = parser.parse_args()
    count = args.run
    if count < 1:
        parser.error("--run takes 1 or more")
    gc.set_threshold(*GC_THRESHOLDS)  # (as the node runs: see the module's docstring)
    gc.freeze()
    if count == 1:
        _lone(args.repeat, args.number)
        return
    payload = orjson.dumps(APPEND)
    frames = encode_frame(payload) * count
    config = BrokerConfig(data_dir=".", port=0)
    budget = BufferBudget(config.max_buffered_bytes)
    driver = _Driver()
    runs = stand_in_runs(config, driver)
    decode = getattr(_codec, "decode_client_request", _codec.decode_request)
    """What a connection decodes a request with (since "The leader's request path without an
    object per APPEND", the original contract's APPEND to a PlainAppend)."""
    requests = [decode(payload) for _ in range(count)]
    infos = [("APPEND", 1.0, len(payload))] * count
    results = [cmd.MessageAppended(1000 + index) for index in range(count)]

    def read() -> None:
        decoder = FrameDecoder(config.max_frame)
        decoder.feed(frames)
        account = budget.account()
        take = getattr(account, "take", None)  # (the code before: fits, then charge)
        while (frame := decoder.next_frame()) is not None:
            if take is not None:
                take(len(frame))
            elif account.fits(len(frame)):
                account.charge(len(frame))
            decode(frame)
        account.close()

    given: list[Any] = []

    def decide() -> None:
        given.clear()
        _done(runs.handle_many(requests, None, given.append))

    decide()
    assert len(given) == 1, "the run was answered in more than one call"
    answers = given[0]
    """What ``handle_many`` gives the connection: a list of answers, or (since "The leader's
    pipelined appends") one ``GroupRun`` for them all, which a write consumes."""

    def settle() -> None:
        group = PendingGroup(count)
        tokens = zip(repeat(group), range(count))
        for (pending, index), outcome in zip(tokens, results, strict=True):
            pending.set(index, outcome)

    group = driver.group
    for index, outcome in enumerate(results):
        group.set(index, outcome)

    def answer() -> None:
        outbox = Outbox(budget.account())
        if type(answers) is list:
            outbox.put_many(infos, answers)
        else:  # (a fresh GroupRun each time: a write takes its answers out of it)
            outbox.put_many(infos, type(answers)(answers.group, 0, count))
        writer = AnswerWriter(
            _Socket(),  # type: ignore[arg-type]
            outbox,
            observe=lambda tally, now: None,
            plaintext_hint=None,
        )
        taken = writer._take()
        assert taken is not None and (taken[-1] if len(taken) == 4 else len(taken[0])) == count

    parts = {"read": read, "decide": decide, "settle": settle, "answer": answer}
    figures = {name: _best(part, count, args.number, args.repeat) for name, part in parts.items()}
    print(
        f"leader's request path, a receive of {count} APPENDs, us per APPEND (thread CPU, best "
        f"of {args.repeat}): "
        + ", ".join(f"{name} {value:.3f}" for name, value in figures.items())
        + f"; together {sum(figures.values()):.3f}"
    )
    _apart(count, args.repeat, args.number)


def _lone(repeat: int, number: int) -> None:
    """The parts for a receive of one APPEND (``--run 1``)."""
    payload = orjson.dumps(APPEND)
    frame = encode_frame(payload)
    config = BrokerConfig(data_dir=".", port=0)
    budget = BufferBudget(config.max_buffered_bytes)
    driver = _Driver()
    runs = stand_in_runs(config, driver)
    decode = _codec.decode_client_request
    request = decode(payload)
    info = ("APPEND", 1.0, len(payload))
    outcome = cmd.MessageAppended(1000)
    decoder = FrameDecoder(config.max_frame)
    account = budget.account()
    take_whole = getattr(decoder, "take_whole", None)

    def read() -> None:
        if take_whole is not None:
            got = take_whole(frame)
            if got is None:
                raise AssertionError("a receive of one frame was not taken whole")
            account.take(len(got))
            decode(got)
        else:
            decoder.feed(frame)
            while (got := decoder.next_frame()) is not None:
                account.take(len(got))
                decode(got)
        account.release(account.held)

    given: list[Any] = []
    lone = getattr(runs, "lone_append", None)
    """What a connection asks first of a receive of one APPEND, since "The leader's CPU per
    request (ninth round)" (the code before: ``handle_many``)."""

    def decide() -> None:
        given.clear()
        if lone is not None:
            given.append(lone(request))
        else:
            _done(runs.handle_many([request], None, given.extend))

    def settle() -> None:
        Pending().set(outcome)

    decide()
    answer_type = type(given[0])

    outbox = Outbox(budget.account())
    writer = AnswerWriter(
        _Socket(),  # type: ignore[arg-type]
        outbox,
        observe=lambda tally, now: None,
        plaintext_hint=None,
    )

    def answer() -> None:
        pending = Pending()
        outbox.put(*info[:2], answer_type(later=pending), info[2])
        if writer._take() is not None:  # (the reader's kick, before the outcome is known)
            raise AssertionError("an answer not known was taken")
        pending.set(outcome)
        taken = writer._take()
        assert taken is not None and taken[-1] == 1

    parts = {"read": read, "decide": decide, "settle": settle, "answer": answer}
    figures = {name: _best(part, 1, number * 16, repeat) for name, part in parts.items()}
    print(
        f"the lone request's path, a receive of 1 APPEND, us per APPEND (thread CPU, best of "
        f"{repeat}): "
        + ", ".join(f"{name} {value:.3f}" for name, value in figures.items())
        + f"; together {sum(figures.values()):.3f}"
    )
    driver = _ProposingDriver()
    command = cmd.AppendMessage("Q-AAAAABBBBB", b'"x"', None, None, 1_700_000_000_000)

    now = getattr(Proposing, "propose_now", None)  # (since the ninth round: no coroutine)

    def propose() -> None:
        if now is not None:
            now(driver, command)
        else:
            _done(Proposing.propose(driver, command))  # type: ignore[arg-type]
        driver._capacity.release()  # (the settle's, not timed apart)

    print(
        "the driver's propose of it (its checks and Pending, a stand-in ledger; not in "
        f"'together'): {_best(propose, 1, number * 16, repeat):.3f}"
    )
    _apart(1, repeat, number * 16)
    when_known = getattr(AppendAnswer, "when_known", None)
    known = Pending()
    known.set(outcome)
    head = answer_type(later=known)
    on_known = writer.pump
    if when_known is not None:

        def re_ask() -> None:
            head.when_known(on_known)

        print(
            "the pump's second ask of a head known (when_known, False), what its callback "
            f"costs before the write: {_best(re_ask, 1, number * 16, repeat):.3f}"
        )


def _apart(count: int, repeat: int, number: int) -> None:
    """Two parts not in "together" (what the stand-ins leave out), per write of ``count``
    answers: the metrics' ``observe_batch`` of the write on a real ``BrokerMetrics`` as the
    writer calls it, its fold's share counted (latencies spread, 0.2 to 30 ms, as answers at
    one in flight take; every 512 writes folded as a broker folds them), and ``settling()``
    around one applied Ready's outcomes (one ``Pending`` whose callback is held and called)."""
    metrics = BrokerMetrics(broker=None)  # type: ignore[arg-type]
    rng = random.Random(7)
    starts = [1000.0 - rng.uniform(0.0002, 0.03) for _ in range(4096)]
    at = iter(range(1 << 62))
    now = 1000.0

    def observe() -> None:
        metrics.observe_batch({("APPEND", None, starts[next(at) & 4095]): count}, now)

    def ready() -> None:
        pending = Pending()
        pending.when_done(_nothing)
        with settling():
            pending.set(None)

    print(
        f"apart, per write of {count} (not in 'together'): the metrics' observe_batch "
        f"{_best(observe, 1, number, repeat):.3f}; settling() around one Ready's outcome "
        f"(a Pending, its callback) {_best(ready, 1, number, repeat):.3f} per Ready"
    )


def _nothing() -> None:
    pass


class _ProposingDriver:
    """What ``Proposing.propose`` reads of the driver, the ledger a stand-in (it keeps
    nothing), for a lone APPEND on a leader with room on its disk."""

    _propose_taken = getattr(Proposing, "_propose_taken", None)
    """(Since the ninth round, what ``propose`` and ``propose_now`` call once the unit is
    taken.)"""

    def __init__(self) -> None:
        from trio_broker._runtime._disk_space import DiskState

        self._capacity = Capacity(1024)
        self.node = _Node()
        self.disk = _Disk(DiskState.OK)
        self.reads = None
        self._ledger = _Ledger()
        self._lone = False

    def wake(self) -> None:
        pass


class _Node:
    """As ``RaftNode`` answers ``propose``: a leader (a property, as the node's), no transfer."""

    transfer_target = None
    role = "leader"

    @property
    def is_leader(self) -> bool:
        return self.role == "leader"


class _Disk:
    def __init__(self, state: Any) -> None:
        self.state = state

    def refusal(self, command: Any) -> None:
        return None


class _Ledger:
    def add(self, command: Any, pending: Any) -> None:
        pass


if __name__ == "__main__":
    main()
