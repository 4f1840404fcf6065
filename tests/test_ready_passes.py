"""The per-Ready passes over every command (docs/performance-history.md, "Per-Ready passes and the
collector (third round)"): each cut keeps what it counts and what it refuses."""

from __future__ import annotations

import tracemalloc
import typing
from typing import Any
from unittest import mock

import attrs
import orjson
import pytest

from trio_broker._core import _commands as cmd
from trio_broker._core import _metadata_commands as _mc  # noqa: F401  (its commands subclass MapCommand)
from trio_broker._core import _raft_messages as rm
from trio_broker._core import _work_commands as wc
from trio_broker._core._commands import data_size
from trio_broker._core._work_commands import Publish, ReadRecords, Record
from trio_broker._errors import RemoteProtocolError
from trio_broker._protocol._entries import decode_payload, payload_from_obj, payload_to_obj
from trio_broker._protocol._framing import FrameDecoder, encode_frame
from trio_broker._runtime import _save_place
from trio_broker._runtime._save_place import SHORT_COMMANDS, apply_weight, light, short
from trio_broker._runtime._snapshots import HELD_PER_COMMAND, held_size

V = b'"0123456789"'


def _mixed() -> list[Any]:
    """A group's commands of every kind the passes tell apart."""
    return [
        cmd.AppendMessage("q", V, None, None, 5),
        cmd.ReadNext("c", "q"),
        cmd.AppendMessage("q", V * 3, "p", 1, 5),
        cmd.AppendBatch("q", (V, V * 2)),
        cmd.ReadBatch("c", "q", 100),
        ReadRecords("c", "q", 7),
        Publish("q", (Record(V, (("k", "v"),)),)),
        cmd.Ack("c", "q", 3),
        cmd.CreateQueue("r"),
    ]


def _weight_one_by_one(entries: Any) -> int:
    """The rule apply_weight's docstring states, command by command."""
    weight = 0
    for entry in entries:
        payload = entry.payload
        commands = payload.commands if isinstance(payload, cmd.CommandGroup) else (payload,)
        for c in commands:
            if isinstance(c, cmd.ReadBatch | ReadRecords):
                weight += c.max_messages
            elif isinstance(c, cmd.AppendBatch):
                weight += len(c.data)
            elif isinstance(c, Publish):
                weight += len(c.records)
            else:
                weight += 1
    return weight


@pytest.mark.parametrize(
    "commands",
    [
        [cmd.AppendMessage("q", V, None, None, 5)] * 5,
        [cmd.AppendMessage("q", V, None, None, 5), cmd.ReadNext("c", "q")] * 3,
        _mixed(),
    ],
)
def test_weight_and_held_size_count_as_the_rule(commands: list[Any]) -> None:
    """A group of the usual commands is weighed and counted without a pass per command: the
    same figures as each command's own (apply_weight's rule; data_size + HELD_PER_COMMAND)."""
    group = cmd.CommandGroup(tuple(commands))
    entries = (rm.Entry(1, 1, group), rm.Entry(1, 2, commands[-1]))
    assert apply_weight(entries) == _weight_one_by_one(entries)
    assert held_size(group) == data_size(group) + HELD_PER_COMMAND * len(commands)
    single = commands[-1]
    assert held_size(single) == data_size(single) + HELD_PER_COMMAND


class _CountedEntry:
    """An entry whose payload is counted each time it is read."""

    def __init__(self, payload: Any, reads: list[int]) -> None:
        self._payload = payload
        self._reads = reads

    @property
    def payload(self) -> Any:
        self._reads[0] += 1
        return self._payload


def test_a_readys_second_weight_reads_no_command() -> None:
    """The driver asks the weight of a Ready's committed tuple twice (APPLY_AHEAD, then
    ``light``): the second answer is the first's, the tuple's entries not read again; another
    tuple, or a list (which may change), is weighed anew."""
    reads = [0]
    group = cmd.CommandGroup((cmd.ReadBatch("c", "q", 100), cmd.ReadNext("c", "q")))
    committed: Any = (_CountedEntry(group, reads),)
    assert apply_weight(committed) == 101
    assert apply_weight(committed) == 101
    assert reads == [1]
    other: Any = (_CountedEntry(cmd.ReadBatch("c", "q", 5), reads),)
    assert apply_weight(other) == 5
    listed: Any = [_CountedEntry(group, reads)]
    assert apply_weight(listed) == 101
    listed[0] = _CountedEntry(cmd.ReadNext("c", "q"), reads)
    assert apply_weight(listed) == 1
    assert reads == [4]
    _save_place._last_weighed[0] = (None, 0)  # (holds no test object past the test)


def test_a_full_pipelines_group_is_short() -> None:
    """A replica's Ready of one entry of 512 appends (32 connections x 16 in flight) runs
    its transaction on the event loop's thread; the bound still holds past SHORT_COMMANDS."""
    append = cmd.AppendMessage("q", V, None, None, 5)
    full = (rm.Entry(1, 1, cmd.CommandGroup((append,) * 512)),)
    assert short(full)
    over = (rm.Entry(1, 1, cmd.CommandGroup((append,) * (SHORT_COMMANDS + 1))),)
    assert not short(over)


class _GroupKind(cmd.CommandGroup):
    """A subclass of a group: still a group, which a group may not hold."""


def test_a_group_in_a_group_is_refused_on_every_path() -> None:
    """Groups do not nest, and hold one command at least, however a group is built: by its
    class (the proposals), by ``attrs.evolve``, by the decoder from JSON or from stored
    bytes (a nested COMMAND_GROUP among appends, which the decoder's own loop decodes)."""
    append = cmd.AppendMessage("q", V, None, None, 5)
    inner = cmd.CommandGroup((append,))
    for bad in ((append, inner), (inner,), (append, _GroupKind((append,))), ()):
        with pytest.raises(ValueError, match="none of them a group"):
            cmd.CommandGroup(bad)
        if bad:
            with pytest.raises(ValueError, match="none of them a group"):
                attrs.evolve(inner, commands=bad)
    obj = {"type": "COMMAND_GROUP", "commands": [payload_to_obj(append), payload_to_obj(inner)]}
    with pytest.raises(RemoteProtocolError):
        payload_from_obj(obj)
    with pytest.raises(RemoteProtocolError):
        decode_payload(orjson.dumps(obj))
    with pytest.raises(RemoteProtocolError):
        payload_from_obj({"type": "COMMAND_GROUP", "commands": []})
    assert payload_from_obj(payload_to_obj(cmd.CommandGroup((append, append)))).commands == (
        append,
        append,
    )


def test_a_frame_is_copied_once() -> None:
    """A frame's payload is bytes copied once out of the buffer (a second copy doubled the
    memory a large frame takes while it is cut), and the buffer still takes new bytes."""
    decoder = FrameDecoder(max_frame=4 << 20)
    payload = b"x" * (2 << 20)
    decoder.feed(encode_frame(payload))
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        frame = decoder.next_frame()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert type(frame) is bytes and frame == payload
    assert peak - before < 1.5 * len(payload)
    decoder.feed(encode_frame(b"next") + encode_frame(b"and"))
    assert decoder.next_frame() == b"next"
    decoder.feed(b"")
    assert decoder.next_frame() == b"and"
    assert decoder.next_frame() is None


def _command_types() -> set[type]:
    """Every concrete command type the core defines: the members of the single-command union,
    unions and subclasses followed (the metadata group's commands subclass MapCommand)."""
    found: set[type] = set()
    stack: list[Any] = [cmd.SingleCommand]
    while stack:
        item = stack.pop()
        args = typing.get_args(item)
        if args:
            stack.extend(args)
            continue
        stack.extend(item.__subclasses__())
        if item is not cmd.MapCommand:  # (a marker: never a command itself)
            found.add(item)
    return found


def test_every_command_type_has_a_weight_rule() -> None:
    """A command type without its own rule in apply_weight would weigh as a deletion: each
    one the core defines has one, and no rule names a type that is no command."""
    types = _command_types()
    assert len(types) > 30
    assert types - set(_save_place._WEIGHTS) == set()
    assert set(_save_place._WEIGHTS) - types == {rm.NoOp, rm.ConfigEntry}


def _group_of(commands: Any) -> tuple[Any, ...]:
    return (rm.Entry(1, 1, cmd.CommandGroup(tuple(commands))),)


def test_work_queue_commands_weigh_their_work() -> None:
    """The entries that held the loop for seconds (640 group READs of 1,000 leases each: 9-10
    s; 640 EXTENDs of 1,000 sequence numbers: 4.7 s) are not light, and each work-queue
    command weighs the leases it may take, end or move, a sweep its bound per apply, a
    deletion more than any light transaction."""
    reads = [wc.GroupRead("q", f"g{i % 64}", "m", 1000, 0) for i in range(SHORT_COMMANDS)]
    extends = [
        wc.GroupExtend("q", f"g{i % 64}", "m", tuple(range(1000)), 1) for i in range(SHORT_COMMANDS)
    ]
    for worst in (reads, extends):
        assert short(_group_of(worst))
        assert not light(_group_of(worst))
    assert not light(_group_of(reads[:1]))
    lease = _save_place.LEASE_WEIGHT
    change = _save_place.LEASE_CHANGE_WEIGHT
    read_one = _save_place.GROUP_READ_WEIGHT
    assert apply_weight(_group_of(reads[:2])) == 2 * (read_one + 1000 * lease)
    # (640 group READs of one message each held the loop 68-117 ms: their own cost counts)
    assert not light(_group_of([wc.GroupRead("q", "g", "m", 1, 0)] * SHORT_COMMANDS))
    nack = wc.GroupNack("q", "g", "m", (1, 2, 3), 0)
    ack = wc.GroupAck("q", "g", "m", ((1, 10), (20, 20)))
    assert apply_weight(_group_of([nack, ack, extends[0]])) == change * (3 + 11 + 1000)
    whole = wc.GroupAck("q", "g", "m", ((0, 1 << 40),))
    assert apply_weight(_group_of([whole])) == change * wc.MAX_IN_FLIGHT
    for sweep, bound in (
        (wc.ExpireLeases(0), wc.EXPIRIES_PER_APPLY),
        (wc.ForgetIdlePositions(0, 1), wc.FORGETS_PER_APPLY),
    ):
        assert apply_weight((rm.Entry(1, 1, sweep),)) == bound
    for deletion in (wc.DeleteQueue("q"), wc.DeleteGroup("q", "g"), cmd.ApplyRetention(0)):
        assert not light((rm.Entry(1, 1, deletion),))
    _save_place._last_weighed[0] = (None, 0)


def test_an_empty_weighing_keeps_the_last_weight() -> None:
    """The apply-ahead path weighs the committed tuple, then ``light(())`` (its first
    transaction applies nothing), then the committed tuple again: the second answer is still
    the kept one, the entries not read again."""
    reads = [0]
    committed: Any = (_CountedEntry(cmd.ReadBatch("c", "q", 1000), reads),)
    assert apply_weight(committed) == 1000
    assert light(())
    assert apply_weight(()) == 0
    assert apply_weight(committed) == 1000
    assert reads == [1]
    _save_place._last_weighed[0] = (None, 0)


def test_a_group_refuses_an_object_posing_as_a_group() -> None:
    """An object whose ``__class__`` says CommandGroup (a mock with its spec) is refused as
    a group is: the quick test of exact types hands any other type to ``isinstance``."""
    append = cmd.AppendMessage("q", V, None, None, 5)
    for posing in (mock.Mock(spec=cmd.CommandGroup), mock.NonCallableMock(spec=cmd.CommandGroup)):
        with pytest.raises(ValueError, match="none of them a group"):
            cmd.CommandGroup((append, posing))
    assert cmd.CommandGroup((append, wc.ExpireLeases(0))).commands[1] == wc.ExpireLeases(0)
