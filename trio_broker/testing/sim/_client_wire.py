"""The clients' side of the wire: with ``wire``, a client's request travels as the frame a
client writes (:func:`~trio_broker._protocol._codec.encode_request`), is read as a broker's
connection reads it (:class:`~trio_broker._protocol.FrameDecoder`,
:func:`~trio_broker._protocol._codec.decode_client_request`) and made a command by the
runtime's own functions (``_runtime/_operations.py``; an APPEND without a producer as
``_runtime/_runs.py`` makes it from its :data:`~trio_broker._protocol._codec.PlainAppend`,
the path a plain APPEND written in the original contract's key order takes), which must be
the command the client meant; its answer is written as the runtime writes it
(the answer frames of ``_protocol/_answer_frames.py`` where the runtime uses them, else
``encode_response(response_for(result))``) and read back by the client
(:func:`~trio_broker._protocol._codec.decode_response`), which must give what the result
says. The simulator's clients' operations (appends, idempotent appends, batches, READs of
one or several messages, peeks, ACKs) all take this path; a queue's creation (the
simulator names its queues, a client's CREATE_QUEUE does not), the consumer groups' and
the lifecycle's commands do not.
"""

from __future__ import annotations

from typing import Any

import attrs
import orjson

from ..._core._commands import (
    Ack,
    AppendBatch,
    AppendMessage,
    BatchAppended,
    MessageAppended,
    ReadBatch,
    ReadNext,
)
from ..._errors import BrokerError, ProtocolError, RemoteProtocolError
from ..._protocol import FrameDecoder
from ..._protocol import _messages as m
from ..._protocol._answer_frames import appended_frame, batch_appended_frame
from ..._protocol._codec import (
    as_request,
    decode_client_request,
    decode_response,
    encode_request,
    encode_response,
)
from ..._protocol._framing import encode_frame
from ..._runtime._answer import response_for
from ..._runtime._operations import append_command, position_command, read_command
from ..._runtime._runs import read_frame
from ._params import SimulationFailure


@attrs.frozen
class _Limits:
    """What the runtime's request checks read of a broker's configuration."""

    max_data_bytes: int = 1 << 20


LIMITS = _Limits()


def request_of(command: Any) -> m.Request | None:
    """The protocol request a client writes for ``command`` (None: not a client's)."""
    kind = type(command)
    if kind is AppendMessage:
        return m.Append(
            command.queue_id,
            orjson.loads(command.data),
            producer_id=command.producer_id,
            producer_seq=command.producer_seq,
        )
    if kind is AppendBatch:
        return m.AppendBatch(
            command.queue_id,
            [orjson.loads(v) for v in command.data],
            producer_id=command.producer_id,
            producer_seq=command.producer_seq,
        )
    if kind is ReadNext:
        return m.Read(command.queue_id, command.client_id)
    if kind is ReadBatch:
        mode = "peek" if command.peek else None
        return m.Read(command.queue_id, command.client_id, command.max_messages, mode)
    if kind is Ack:
        return m.AckRequest(command.queue_id, command.client_id, command.sequence_num)
    return None


def command_of(frame: bytes) -> Any:
    """What a broker makes of a client's frame: its connection's reader, then the
    runtime's request checks. A refusal is a :class:`SimulationFailure` (the simulator's
    clients write only valid requests)."""
    decoder = FrameDecoder()
    decoder.feed(frame)
    try:
        payload = decoder.next_frame()
        if payload is None or decoder.next_frame() is not None:
            raise SimulationFailure(f"a client's frame {frame!r} is not one whole frame")
        request = decode_client_request(payload)
    except ProtocolError as exc:
        raise SimulationFailure(f"a client's request refused: {exc.message}") from None
    if type(request) is tuple:  # (a PlainAppend: its value's bytes as sliced from the frame)
        return AppendMessage(request[0], request[1])
    request = as_request(request)
    kind = type(request)
    if kind is m.Append or kind is m.AppendBatch:
        command: Any = append_command(request, LIMITS)  # type: ignore[arg-type]
    elif kind is m.Read:
        command = read_command(request, LIMITS)  # type: ignore[arg-type]
    elif kind is m.AckRequest:
        command = position_command(request)
    else:
        raise SimulationFailure(f"a client's frame decoded to {request!r}")
    if isinstance(command, BrokerError):
        raise SimulationFailure(f"a client's request refused: {command.message}")
    return command


def through_wire(command: Any) -> Any:
    """``command`` as a broker reads it from the frame a client writes for it, checked: it
    must be the same command (a READ of several messages but for its ``max_bytes``, which
    the broker sets from its frame size). Commands no client writes pass as they are."""
    request = request_of(command)
    if request is None:
        return command
    if type(command) is AppendMessage and command.producer_id is None:
        # The original contract's APPEND as most clients write it (its keys in this order:
        # the connection's PlainAppend path); the library's client writes ``operation`` last.
        payload = orjson.dumps(
            {"operation": "APPEND", "queue_name": command.queue_id, "data": request.data}
        )
    else:
        payload = encode_request(request)
    frame = encode_frame(payload)
    got = command_of(frame)
    expected = command
    if type(got) is ReadBatch and type(command) is ReadBatch:
        expected = attrs.evolve(command, max_bytes=got.max_bytes)
    if got != expected:
        raise SimulationFailure(f"a client's {command!r} reached the broker as {got!r}")
    return got


def answer_frame(result: Any) -> bytes:
    """The frame the runtime writes for ``result``: an append's and a READ's straight from
    the result (``_pending``'s ``RunAnswer.frame``, ``_runs``' ``read_frame``), any other
    through the general encoder."""
    kind = type(result)
    if kind is MessageAppended and not result.duplicate:
        return appended_frame(result.sequence_num)
    if kind is BatchAppended and not result.duplicate:
        return batch_appended_frame(result.first_sequence_num, result.count)
    frame = read_frame(result)
    if frame is not None:
        return frame
    return encode_frame(encode_response(response_for(result)))


def check_answer(result: Any) -> None:
    """The client reads the answer's frame: it must say what ``result`` says."""
    expected = response_for(result)
    decoder = FrameDecoder()
    decoder.feed(answer_frame(result))
    payload = decoder.next_frame()
    try:
        if payload is None:
            raise RemoteProtocolError("not one whole frame")
        got = decode_response(payload, type(expected))
    except (ProtocolError, RemoteProtocolError) as exc:
        raise SimulationFailure(f"the answer to {result!r} refused: {exc}") from None
    if _plain(got) != _plain(expected):
        raise SimulationFailure(f"the answer to {result!r} read as {got!r}")


def _plain(response: Any) -> Any:
    """A response comparable whether its values are stored bytes (an answer made) or
    values (an answer read)."""
    if type(response) is m.Message:
        return ("message", response.sequence_num, orjson.dumps(response.data))
    if type(response) is m.MessageBatch:
        return ("messages", [_plain(message) for message in response.messages])
    if isinstance(response, BrokerError):
        return ("error", response.code, response.message)
    return response
