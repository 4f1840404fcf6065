"""A single READ's path through the leader's request handling and its log entry, by hand
(docs/performance-history.md, "Single READs: the leader's request path"): each shortcut gives what
the general path gives.

- ``Runs.handle_many`` takes the original contract's READ (queue and client only) to its
  ``ReadNext`` at once: the same commands and refusals, in the same order, as ``_run_command``
  gives one request at a time, and one command object for a run of one reader's READs;
- a COMMAND_GROUP of single READs is written by hand (``_reads_group_bytes``) as exactly the
  bytes orjson writes for the general form, and read back to the same group, one object per
  run of one reader; any other group, and any id that is not a ``str``, is left to the
  general form, with its errors;
- ``encoded_bound`` of a ``ReadNext`` is the general formula's bound, and a group's
  ``data_size`` and ``apply_weight`` count READs as before;
- a run of one reader's READs is answered by the core's ``read_next_run`` as ``read_range``
  and ``read_result`` answer its READs one at a time;
- a READ's answer in a run (``ReadNextAnswer``) is what ``ConvertedAnswer`` with
  ``read_answer`` answers, frame and response;
- ``decode_request`` remembers the original contract's READ frames: a repeat gives the same
  request as decoding it afresh, frames of any other form are decoded each time, and what it
  remembers stays within its bounds.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import orjson
import pytest
import trio

from tests.general_form import assert_encoded_as_general, general_bytes
from tests.stand_in_driver import StandInDriver
from trio_broker._core import _commands as cmd
from trio_broker._core._proposals import COMMAND_OVERHEAD, encoded_bound
from trio_broker._core._queues import read_next_run, read_range, read_result
from trio_broker._core._raft_messages import Entry
from trio_broker._errors import BrokerError, ErrorCode, ProtocolError
from trio_broker._protocol import Read, _codec
from trio_broker._protocol._codec import decode_request, encode_response, request_from_dict
from trio_broker._protocol._entries import (
    decode_payload,
    encode_payload,
    payload_from_obj,
    payload_to_obj,
)
from trio_broker._protocol._group_bytes import _reads_group_bytes
from trio_broker._runtime._config import BrokerConfig
from trio_broker._runtime._pending import PendingGroup
from trio_broker._runtime._runs import ConvertedAnswer, ReadNextAnswer, Runs
from trio_broker._runtime._save_place import apply_weight
from trio_broker._runtime._work import read_answer

IDS = ["C-0123456789", "Q-0123456789abcdef", "é", '"quoted"\\', "\u2028\x01", "🙂", ""]


def _reads(rng: random.Random) -> cmd.CommandGroup:
    """Runs of one reader's READs (each command its own object, its ids their own strings,
    as decoded requests are), several readers and queues."""
    commands = []
    for _ in range(rng.randint(1, 8)):
        client, queue = rng.choice(IDS), rng.choice(IDS)
        for _ in range(rng.randint(1, 16)):
            commands.append(cmd.ReadNext("".join(list(client)), "".join(list(queue))))
    return cmd.CommandGroup(tuple(commands))


@pytest.mark.parametrize("seed", range(60))
def test_a_group_of_single_reads_is_written_by_hand_as_orjson_writes_it(seed):
    group = _reads(random.Random(seed))
    written = _reads_group_bytes(group.commands)
    assert written is not None
    assert written == general_bytes(group)
    assert encode_payload(group) == written
    decoded = decode_payload(written)
    assert decoded == group
    # Read back through the converter's form, command by command: the same commands.
    general = [payload_from_obj(c) for c in orjson.loads(written)["commands"]]
    assert list(decoded.commands) == general
    # One object per run of one reader (a frozen command: shared, never changed).
    runs = 1 + sum(a != b for a, b in itertools.pairwise(group.commands))
    assert len({id(c) for c in decoded.commands}) == runs


@pytest.mark.parametrize(
    "other",
    [
        cmd.AppendMessage("Q-1", b'"v"', None, None, 5),
        cmd.ReadBatch("C-1", "Q-1", 3),
        cmd.Ack("C-1", "Q-1", 2),
        cmd.Seek("C-1", "Q-1", 1),
    ],
    ids=["append", "read-batch", "ack", "seek"],
)
@pytest.mark.parametrize("where", [0, 1, 3])
def test_any_other_group_is_written_by_the_general_form(other, where):
    commands: list[Any] = [cmd.ReadNext("C-1", "Q-1") for _ in range(3)]
    commands.insert(where, other)
    group = cmd.CommandGroup(tuple(commands))
    assert _reads_group_bytes(group.commands) is None
    assert encode_payload(group) == general_bytes(group)
    assert decode_payload(encode_payload(group)) == group


class _Name(str):
    pass


@pytest.mark.parametrize("bad", [None, 7, b"C-1", _Name("C-1")], ids=repr)
@pytest.mark.parametrize("field", ["client_id", "queue_id"])
@pytest.mark.parametrize("where", [0, 1, 2])
def test_an_id_that_is_not_a_str_goes_to_the_general_form_wherever_it_is(bad, field, where):
    commands = [cmd.ReadNext("C-1", "Q-1") for _ in range(3)]
    fields = {"client_id": "C-1", "queue_id": "Q-1", field: bad}
    commands[where] = cmd.ReadNext(**fields)
    group = cmd.CommandGroup(tuple(commands))
    assert _reads_group_bytes(group.commands) is None
    assert_encoded_as_general(group)


@pytest.mark.parametrize("bad", [None, 7, [], {"a": 1}, True], ids=repr)
@pytest.mark.parametrize("field", ["client_id", "queue_id"])
def test_an_update_position_whose_id_is_not_a_string_is_refused_as_before(bad, field):
    """A READ read back from a peer: an id of another type takes the converter's path,
    which refuses it with its own error (the same as a lone UPDATE_POSITION's)."""
    one = {"type": "UPDATE_POSITION", "queue_id": "Q-1", "client_id": "C-1", field: bad}
    ok = {"type": "UPDATE_POSITION", "queue_id": "Q-1", "client_id": "C-1"}
    raw = orjson.dumps({"type": "COMMAND_GROUP", "commands": [ok, one]})
    with pytest.raises(Exception) as in_group:
        decode_payload(raw)
    with pytest.raises(Exception) as alone:
        decode_payload(orjson.dumps(one))
    assert type(in_group.value) is type(alone.value)
    assert field in str(in_group.value)


@pytest.mark.parametrize("client", ["C-1", "", "é🙂" * 40])
@pytest.mark.parametrize("queue", ["Q-ABCDE12345", ""])
def test_a_reads_encoded_bound_is_the_general_formulas(client, queue):
    command = cmd.ReadNext(client, queue)
    assert encoded_bound(command) == COMMAND_OVERHEAD + cmd.text_bound(client) + cmd.text_bound(
        queue
    )
    # Not a str: counted as the general form counts it (None: in the overhead).
    assert encoded_bound(cmd.ReadNext(None, queue)) == COMMAND_OVERHEAD + cmd.text_bound(queue)  # type: ignore[arg-type]
    # A READ's bound is a bound: its entry's JSON is within it.
    assert len(orjson.dumps(payload_to_obj(command))) <= encoded_bound(command)


READS = [
    Read("Q-1", "C-1"),
    Read("Q-1", "C-1"),
    Read("Q-1", "C-2"),
    Read("Q-1", "C-1"),
    Read("Q-1", ""),  # refused: BAD_REQUEST
    Read("Q-1", "C-1", wait_ms=0),  # the general path, the same command
    Read("Q-1", "C-1", mode="move"),
    Read("Q-1", "C-1", max_messages=2),
    Read("Q-1", "C-1", max_messages=0),  # refused
    Read("Q-2", "C-1"),
    Read("Q-2", "C-1"),
    Read("Q-1", "C-1"),
]


def _handled_reads() -> tuple[Runs, StandInDriver, list[Any]]:
    """:data:`READS` through ``Runs.handle_many`` on a stand-in driver (none decided alone):
    the runs, the driver with what it was given, and the answers."""
    config = BrokerConfig(data_dir="/nonexistent")

    async def handle(request: Any, session: Any) -> Any:
        raise AssertionError(f"decided alone: {request!r}")

    driver = StandInDriver(max_group=1000)
    runs = Runs(config, driver, handle=handle, closing=lambda: False, wall_clock_ms=lambda: 1)  # type: ignore[arg-type]
    answers: list[Any] = []
    trio.run(runs.handle_many, list(READS), None, answers.extend)
    return runs, driver, answers


def test_a_runs_reads_take_the_commands_and_refusals_of_the_one_by_one_path():
    """The commands proposed, and the answers refused at once, are those ``_run_command``
    gives for each READ alone, in order; a run of one reader's READs shares one command."""
    runs, driver, answers = _handled_reads()

    expected_commands, expected_refusals = [], []
    for i, request in enumerate(READS):
        joining = runs._run_command(request, 1)
        assert joining is not None
        command, convert = joining
        assert convert is read_answer
        if isinstance(command, BrokerError):
            expected_refusals.append((i, command.code, command.message))
        else:
            expected_commands.append(command)
    assert [c for run in driver.runs for c in run] == expected_commands
    assert len(answers) == len(READS)
    refused = [
        (i, a._now.code, a._now.message) for i, a in enumerate(answers) if a._now is not None
    ]
    assert refused == expected_refusals
    first = driver.runs[0]
    assert first[0] is first[1]  # (one reader's run: one object)
    assert first[2] is not first[1] and first[3] is not first[1]  # (another reader between)


RESULTS = [
    cmd.MessageRead(7, b'{"k":[1,"two"]}'),
    cmd.MessageRead(2**63 - 1, b'"\\u2028 \\"quoted\\""'),
    cmd.MessageRead(None, None),
    cmd.CommandRejected(ErrorCode.QUEUE_NOT_FOUND, "queue 'Q-1' does not exist"),
    BrokerError(ErrorCode.NOT_LEADER, "not the leader"),
]


def _same_answer(answer: Any, reference: Any) -> None:
    assert answer.frame() == reference.frame()
    known, expected = answer.known(), reference.known()
    assert (known is None) == (expected is None)
    if known is not None:
        assert encode_response(known) == encode_response(expected)


def test_a_single_reads_answer_is_the_converted_answers():
    group = PendingGroup(len(RESULTS))
    pairs = [(ReadNextAnswer(group, i), ConvertedAnswer(group, i, read_answer)) for i in range(5)]
    for answer, reference in pairs:  # nothing known yet
        assert answer.frame() is None and answer.known() is None
        _same_answer(answer, reference)
    for index, result in enumerate(RESULTS):
        group.set(index, result)
    for answer, reference in pairs:
        _same_answer(answer, reference)
    # A message and no message are written from their bytes; a refusal by the general path.
    assert [a.frame() is not None for a, _ in pairs] == [True, True, True, False, False]


def test_a_runs_reads_are_answered_as_converted_answers():
    _, driver, answers = _handled_reads()
    (group,) = driver.groups
    for index in range(len(group.results)):
        group.set(index, RESULTS[index % len(RESULTS)])
    proposed = [a for a in answers if a._now is None]
    assert len(proposed) == len(group.results)
    for index, answer in enumerate(proposed):
        if type(driver.runs[0][index]) is cmd.ReadNext:
            assert type(answer) is ReadNextAnswer
        _same_answer(answer, ConvertedAnswer(group, index, read_answer))


def _fresh(payload: bytes) -> Any:
    """What the general path decodes from a frame (a request, or its refusal's message)."""
    try:
        return request_from_dict(orjson.loads(payload))
    except (ProtocolError, orjson.JSONDecodeError) as exc:
        return getattr(exc, "message", type(exc))


READ_FRAMES = [
    b'{"operation":"READ","queue_name":"Q-ABCDE12345","client_id":"C-1"}',
    b'{"operation":"READ","queue_name":"Q-ABCDE12345","client_id":"C-2"}',
    b'{"operation":"READ","client_id":"C-1","queue_name":"Q-ABCDE12345"}',
    b'{"operation":"READ","queue_name":"Q-1","client_id":"C-1","max_messages":2}',
    b'{"operation":"READ","queue_name":"Q-1","client_id":"C-1","wait_ms":5}',
    b'{"operation":"READ","queue_name":"Q-1","client_id":""}',
    b'{"operation":"READ","queue_name":"Q-1","client_id":7}',
    b'{"operation":"READ","queue_name":"Q-1","client_id":"' + b"c" * 129 + b'"}',
    b'{"operation":"READ","queue_name":"Q-1","client_id":"\\u00e9"}',
    b'{"operation":"READ", "queue_name":"Q-1","client_id":"C-1"}',
    b'{"queue_name":"Q-1","client_id":"C-1","operation":"READ"}',
    b'{"operation":"READ","queue_name":"Q-1","data":5}',
]


def test_a_remembered_read_is_the_request_decoding_gives_afresh():
    for payload in READ_FRAMES * 3:  # (each frame three times: remembered or not, the same)
        try:
            got: Any = decode_request(payload)
        except ProtocolError as exc:
            got = exc.message
        assert got == _fresh(payload)
    # The original contract's form is remembered: its repeat is the same object; no other
    # form, no refusal (an id of another type, or too long).
    assert decode_request(READ_FRAMES[0]) is decode_request(READ_FRAMES[0])
    assert decode_request(READ_FRAMES[3]) is not decode_request(READ_FRAMES[3])
    assert READ_FRAMES[6] not in _codec._READS and READ_FRAMES[7] not in _codec._READS


def test_remembered_reads_stay_within_their_bounds():
    long_client = b"c" * _codec.MAX_ID_LENGTH
    big = b'{"operation":"READ","queue_name":"Q-1","client_id":"%b"}' % (long_client * 1)
    huge_queue = b'{"operation":"READ","queue_name":"%b","client_id":"%b"}' % (
        b"q" * _codec.MAX_ID_LENGTH,
        b"\\u00e9" * _codec.MAX_ID_LENGTH,  # (128 characters, 768 bytes)
    )
    assert len(huge_queue) > _codec.MAX_READ_REMEMBERED_BYTES
    assert decode_request(huge_queue) == _fresh(huge_queue)
    assert huge_queue not in _codec._READS
    assert decode_request(big) == _fresh(big)
    for i in range(_codec.MAX_READS_REMEMBERED + 10):
        payload = b'{"operation":"READ","queue_name":"Q-1","client_id":"C-%d"}' % i
        assert decode_request(payload) == Read("Q-1", f"C-{i}")
        assert len(_codec._READS) <= _codec.MAX_READS_REMEMBERED
    assert all(len(p) <= _codec.MAX_READ_REMEMBERED_BYTES for p in _codec._READS)
    # Not bytes (a bytearray): decoded, never remembered.
    assert decode_request(bytearray(READ_FRAMES[1])) == _fresh(READ_FRAMES[1])


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_a_read_frame_not_in_bytes_decodes_as_before_and_is_not_remembered(kind):
    """A frame held in a ``bytearray`` or a ``memoryview`` (which has no ``startswith``):
    decoded by the general path, as before READs were remembered, and never remembered. (A
    ``memoryview`` only in the compact form orjson writes: ``loads_object``'s exact checks
    for other forms take bytes, as they did before READs were remembered.)"""
    _codec._READS.clear()
    for payload in READ_FRAMES:
        if kind is memoryview and orjson.dumps(orjson.loads(payload)) != payload:
            continue
        try:
            got: Any = decode_request(kind(payload))
        except ProtocolError as exc:
            got = exc.message
        assert got == _fresh(payload)
    assert _codec._READS == {}


@pytest.mark.parametrize("length", [0, 1, 5, 9])
@pytest.mark.parametrize("deleted", [0, 2, 6])
@pytest.mark.parametrize("position", [0, 1, 3, 8, 9])
@pytest.mark.parametrize("count", [1, 2, 4, 16])
def test_a_run_of_reads_answers_as_its_reads_one_at_a_time(length, deleted, position, count):
    deleted = min(deleted, length)
    stored = {seq: b"v%d" % seq for seq in range(deleted + 1, length + 1)}
    command = cmd.ReadNext("C-1", "Q-1")
    expected, at = [], position
    for _ in range(count):  # the core's rules, one READ at a time
        start, end = read_range(at, deleted, length, command)
        result, moved = read_result(command, ((start, stored[start]),) if start <= end else ())
        expected.append(result)
        at = at if moved is None else moved
    # The run: its range (the first READ's start, as many as it may read), then its answers.
    first, _ = read_range(position, deleted, length, command)
    last = min(length, first + count - 1)
    results, moved_to = read_next_run(first, [stored[s] for s in range(first, last + 1)], count)
    assert results == expected
    assert (position if moved_to is None else moved_to) == at
    assert moved_to is None or moved_to > position


def test_a_groups_size_and_weight_count_its_reads_as_before():
    """A READ carries no data and weighs one message, among commands that carry some."""
    commands = (
        cmd.ReadNext("C-1", "Q-1"),
        cmd.AppendMessage("Q-1", b'"abc"', None, None, 5),
        cmd.ReadNext("C-1", "Q-1"),
        cmd.ReadBatch("C-1", "Q-1", 7),
        cmd.AppendBatch("Q-1", (b"1", b"22", b"333")),
        cmd.ReadNext("C-2", "Q-1"),
    )
    group = cmd.CommandGroup(commands)
    assert cmd.data_size(group) == sum(cmd.data_size(c) + 64 for c in commands)
    assert cmd.data_size(group) == 6 * 64 + 5 + (1 + 2 + 3 + 3 * 8)
    assert cmd.data_size(cmd.CommandGroup(commands[:1] * 3)) == 3 * 64
    assert apply_weight((Entry(1, 1, group), Entry(1, 2, commands[0]))) == 3 + 1 + 7 + 3 + 1
