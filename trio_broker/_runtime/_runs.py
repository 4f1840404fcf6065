"""The requests of one receive decided together (docs/performance-history.md, "A receive's requests
in one call").

The connection hands :meth:`Runs.handle_many` every request of one receive it lets through.
The APPENDs and APPEND_BATCHes (with headers or a producer epoch too), the READs that do not
wait, and ACK and SEEK, each naming its queue by id, are checked into their commands here and
proposed in one call of the driver's ``propose_many``; any other request goes to the broker's
``handle``, as it would alone. Each answer is the one the one-by-one path gives
(tests/test_batch_path.py compares them).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from operator import itemgetter
from typing import TYPE_CHECKING, Any, cast

from .._core import _work_commands as work
from .._core._append_columns import AppendColumns
from .._core._commands import (
    AppendMessage,
    CommandRejected,
    MessageAppended,
    MessageRead,
    ReadNext,
)
from .._core._commands import ReadBatch as ReadBatchCommand
from .._errors import BrokerError, ProtocolError
from .._protocol import AckRequest, Append, AppendBatch, Read, Request, SeekRequest
from .._protocol._codec import (
    DEEP_FROM,
    PlainAppend,
    appended_frame,
    as_request,
    client_value,
    columns_frame,
    message_frame,
    messages_frame,
    nests_too_deep,
    too_deep,
)
from .._storage._read_columns import Deliveries
from ._answer import Answer, response_for
from ._config import BrokerConfig
from ._connections import Session
from ._driver import RaftDriver
from ._operations import (
    append_command,
    plain_append,
    position_command,
    read_command,
    too_large,
)
from ._pending import GroupAnswer, GroupRun, Pending, PendingGroup, RunAnswer
from ._work import Mapped, appended_answer, publish_command, read_answer

Convert = Callable[[Any], Any]
_data_of = itemgetter(1)
"""A :data:`~.._protocol._codec.PlainAppend`'s value as its bytes."""


class Runs:
    """Decides runs of requests for one broker: handed the broker's driver, its ``handle``
    (for the requests that do not join a run), whether it is closing, and its clock."""

    def __init__(
        self,
        config: BrokerConfig,
        driver: RaftDriver,
        *,
        handle: Callable[[Request, Session | None], Awaitable[Answer]],
        closing: Callable[[], bool],
        wall_clock_ms: Callable[[], int],
    ) -> None:
        self._config = config
        self._max_data = config.max_data_bytes
        """(The config is frozen: its property, a call and a ``max``, read once, not per
        APPEND.)"""
        self._driver = driver
        self.handle = handle
        self._closing = closing
        self._wall_clock_ms = wall_clock_ms

    async def handle_many(
        self,
        requests: list[Request | PlainAppend],
        session: Session | None,
        answered: Callable[[list[Answer]], None],
    ) -> None:
        """Decide the requests of one receive, in order, exactly as :attr:`handle` would one
        at a time, and give the answers to ``answered`` in request order, each as soon as it
        and those before it are known. The requests that name their queue by id, and for a
        READ do not wait (see :meth:`_run_command`), are checked into commands here and
        proposed together (:meth:`RaftDriver.propose_many`: one capacity charge, one result
        list); any other request is decided by :attr:`handle`, after the commands before it
        are proposed, so that the log holds the commands in request order."""
        if len(requests) == 1:  # (a receive of one request: no run to build)
            answered([await self._handle_one(requests[0], session)])
            return
        if type(requests[0]) is tuple:
            plain = self._plain_commands(requests)
            if plain is not None:  # (what the loop below makes of such a receive, in one pass)
                group = await self._propose_group(plain)
                if isinstance(group, BrokerError):
                    answered([Answer(now=group) for _ in requests])
                else:
                    answered(GroupRun(group, 0, len(requests)))  # type: ignore[arg-type]
                return
        answers: list[Answer | None] = []
        given = 0
        """Answers given to ``answered`` (a prefix of ``answers``)."""
        commands: list[Any] = []
        slots: list[int] = []
        converts: list[Convert | None] = []
        """For each of ``commands``, the conversion of its result into its answer (READs,
        ``read_answer``; appends with headers, ``appended_answer``), or None."""

        async def propose() -> None:
            """Propose the run so far; then every answer up to here is known: give them."""
            nonlocal given
            if commands:
                if given == 0 and not others and len(commands) == len(answers) > 1:
                    # The whole receive is one run of the original contract's APPENDs: its
                    # answers are given as one (GroupRun), no object per answer.
                    group = await self._propose_group(commands)
                    if not isinstance(group, BrokerError):
                        commands.clear()
                        slots.clear()
                        converts.clear()
                        given = len(answers)
                        answered(GroupRun(group, 0, given))  # type: ignore[arg-type]
                        return
                    for slot in slots:
                        answers[slot] = Answer(now=group)
                    commands.clear()
                    slots.clear()
                    converts.clear()
                else:
                    await self._propose_run(commands, slots, converts, answers)
            if given < len(answers):
                answered(answers[given:])  # type: ignore[arg-type]  (all known now)
                given = len(answers)

        stamp = self._wall_clock_ms()  # (one stamp for the APPENDs of one receive)
        limit = min(self._driver.max_group, self._config.max_in_flight)
        max_data = self._max_data
        closing = self._closing()  # (read again after each wait)
        others = 0
        """Commands proposed that are not the original contract's APPENDs."""
        last_read: ReadNext | None = None
        for request in requests:
            if type(request) is tuple:  # the original contract's APPEND (PlainAppend)
                queue, data, value = request
                if queue.startswith("Q-") and not closing:
                    # (client_value's check of the value written already, and plain_append's
                    # command: the value's bytes come from the frame, no Append was built)
                    if len(data) > DEEP_FROM and nests_too_deep(value, data):
                        answers.append(Answer(now=too_deep()))
                        continue
                    if len(data) > max_data:
                        answers.append(Answer(now=too_large(len(data), max_data, "data")))
                        continue
                    if len(commands) >= limit:
                        await propose()
                        closing = self._closing()
                    converts.append(None)
                    slots.append(len(answers))
                    commands.append(AppendMessage(queue, data, None, None, stamp))
                    answers.append(None)
                    continue
                request = as_request(request)
            if TYPE_CHECKING:  # (a PlainAppend was turned into its request just above)
                assert not isinstance(request, tuple)
            if (  # the original contract's APPEND, the most frequent: checked here at once
                type(request) is Append
                and request.producer_id is None
                and request.producer_seq is None
                and request.headers is None
                and request.producer_epoch is None
                and request.queue_name.startswith("Q-")
                and not closing
            ):
                # (plain_append's check and command, written out: no call per APPEND)
                try:
                    data = client_value(request.data)
                except ProtocolError as exc:  # nested deeper than the broker stores
                    answers.append(Answer(now=exc))
                    continue
                if len(data) > max_data:
                    answers.append(Answer(now=too_large(len(data), max_data, "data")))
                    continue
                if len(commands) >= limit:
                    await propose()
                    closing = self._closing()
                converts.append(None)
                slots.append(len(answers))
                commands.append(AppendMessage(request.queue_name, data, None, None, stamp))
                answers.append(None)
                continue
            if (  # the original contract's READ (queue and client only): its command at once
                type(request) is Read
                and request.max_messages is None
                and request.mode is None
                and request.wait_ms is None
                and request.client_id
                and request.queue_name.startswith("Q-")
                and not closing
            ):
                if (
                    last_read is None
                    or last_read.client_id != request.client_id
                    or last_read.queue_id != request.queue_name
                ):  # (a run of one reader's READs shares one frozen command)
                    last_read = ReadNext(request.client_id, request.queue_name)
                command, convert = last_read, read_answer
            else:
                joining = self._run_command(request, stamp)
                if joining is None:
                    await propose()
                    answers.append(await self.handle(request, session))
                    await propose()
                    closing = self._closing()
                    continue
                command, convert = joining
            if isinstance(command, BrokerError):
                answers.append(Answer(now=command))
                continue
            if len(commands) >= limit:
                await propose()
                closing = self._closing()
            others += 1
            converts.append(convert)
            slots.append(len(answers))
            commands.append(command)
            answers.append(None)
        await propose()

    def _plain_commands(
        self, requests: list[Request | PlainAppend]
    ) -> AppendColumns | list[Any] | None:
        """The commands of a receive that is one run of the original contract's APPENDs
        (:data:`~.._protocol._codec.PlainAppend`) to queue ids, none refused (each value
        shorter than a value nested too deep can be, and than the largest stored) and no more
        than a run holds, when the broker is not closing: one command per APPEND, as the
        loop of :meth:`handle_many` makes them; None for any other receive.

        All to one queue (the usual receive: a connection's producer), they are held as
        columns (:class:`~.._core._append_columns.AppendColumns`: the queue, the receive's
        stamp, the values' bytes), equal to the list of those commands, and no
        ``AppendMessage`` is made: the ledger cuts them, the entry's encoding writes them and
        the apply stores them from the columns (docs/performance-history.md, "The leader's receive
        held as columns (thirteenth round)")."""
        limit = min(self._driver.max_group, self._config.max_in_flight)
        if len(requests) > limit or self._closing():
            return None
        longest = min(self._max_data, DEEP_FROM)
        # (the first is a tuple: handle_many asked)
        queue = requests[0][0]  # type: ignore[index]
        one = True
        for request in requests:
            if type(request) is not tuple or len(request[1]) > longest:
                return None
            if request[0] != queue:
                one = False
                if not request[0].startswith("Q-"):
                    return None
        if not queue.startswith("Q-"):
            return None
        stamp = self._wall_clock_ms()  # (one stamp for the APPENDs of one receive)
        plain = cast("list[PlainAppend]", requests)  # (each a tuple: checked just above)
        if one:
            return AppendColumns([queue], [stamp], [len(plain)], tuple(map(_data_of, plain)))
        return [AppendMessage(queue, data, None, None, stamp) for queue, data, _ in plain]

    def lone_append(self, request: PlainAppend) -> Answer | None:
        """A receive's one request, the original contract's APPEND to a queue id, decided at
        once as :meth:`handle_many` decides it (:meth:`_handle_one`), without a coroutine:
        its answer; None when it must be decided by :meth:`handle_many` (the broker is
        closing, a queue name, no unit of the driver's capacity free now: those may wait).
        A connection asks this first for a receive of one frame (one request in flight:
        docs/performance-history.md, "The leader's CPU per request (ninth round)")."""
        queue, data, value = request
        if not queue.startswith("Q-") or self._closing():
            return None
        if len(data) > DEEP_FROM and nests_too_deep(value, data):
            return Answer(now=too_deep())
        max_data = self._max_data
        if len(data) > max_data:
            return Answer(now=too_large(len(data), max_data, "data"))
        driver = self._driver
        if not driver.node.is_leader:
            return Answer(now=driver.not_leader_error())
        pending = driver.propose_now(AppendMessage(queue, data, None, None, self._wall_clock_ms()))
        if pending is None:  # (no unit free: handle_many waits for one)
            return None
        if isinstance(pending, BrokerError):
            return Answer(now=pending)
        return AppendAnswer(pending)

    async def _handle_one(self, request: Request | PlainAppend, session: Session | None) -> Answer:
        """A lone request: the original contract's APPEND checked and proposed here (as a
        run of one would be, without the run's lists: docs/performance-history.md, "One request in
        flight"), anything else decided by :attr:`handle`."""
        if type(request) is tuple:  # (a PlainAppend: its value written already)
            queue, data, value = request
            if not queue.startswith("Q-") or self._closing():
                return await self.handle(as_request(request), session)
            if len(data) > DEEP_FROM and nests_too_deep(value, data):
                return Answer(now=too_deep())
            max_data = self._max_data
            if len(data) > max_data:
                return Answer(now=too_large(len(data), max_data, "data"))
            appended = AppendMessage(queue, data, None, None, self._wall_clock_ms())
            driver = self._driver  # (as below, written out: no coroutine more per request)
            if not driver.node.is_leader:
                return Answer(now=driver.not_leader_error())
            pending = driver.propose_now(appended)  # (no coroutine when a unit is free)
            if pending is None:
                pending = await driver.propose(appended)
            if isinstance(pending, BrokerError):
                return Answer(now=pending)
            return AppendAnswer(pending)
        if (
            type(request) is Append
            and request.producer_id is None
            and request.producer_seq is None
            and request.headers is None
            and request.producer_epoch is None
            and request.queue_name.startswith("Q-")
            and not self._closing()
        ):
            command = plain_append(request, self._max_data, self._wall_clock_ms())
            if isinstance(command, BrokerError):
                return Answer(now=command)
            driver = self._driver
            if not driver.node.is_leader:
                return Answer(now=driver.not_leader_error())
            pending = await driver.propose(command)
            if isinstance(pending, BrokerError):
                return Answer(now=pending)
            return AppendAnswer(pending)
        return await self.handle(request, session)  # type: ignore[arg-type]

    def _run_command(self, request: Request, stamp: int) -> tuple[Any, Convert | None] | None:
        """The command (or refusal) of a request that joins a run, and the conversion of its
        result into its answer (None: the result is the answer, through ``response_for``);
        None for a request :attr:`handle` decides alone. The broker's ``_append``, ``_read``
        and ``_commit_position`` decide these requests so: a queue id needs no lookup, and a
        READ without ``wait_ms`` no long poll."""
        if self._closing():
            return None
        if isinstance(request, Append | AppendBatch):
            if not request.queue_name.startswith("Q-"):
                return None
            if request.headers is None and request.producer_epoch is None:
                return append_command(request, self._config, appended_ms=stamp), None
            publish = publish_command(request, self._config, appended_ms=stamp)
            return publish, appended_answer(request)
        if isinstance(request, Read):
            if request.wait_ms or not request.queue_name.startswith("Q-"):
                return None
            return read_command_of(request, self._config), read_answer
        if isinstance(request, AckRequest | SeekRequest):
            if not request.queue_name.startswith("Q-"):
                return None
            return position_command(request), None
        return None

    async def _propose_group(
        self, commands: AppendColumns | list[Any]
    ) -> PendingGroup | BrokerError:
        """Propose ``commands`` together (:meth:`_propose_run` without the answers): their
        group, or the refusal of them all. Empties nothing."""
        if not self._driver.node.is_leader:
            return self._driver.not_leader_error()
        if type(commands) is AppendColumns:
            return await self._driver.propose_columns(commands)
        return await self._driver.propose_many(commands)  # type: ignore[arg-type]

    async def _propose_run(
        self,
        commands: list[Any],
        slots: list[int],
        converts: list[Convert | None],
        answers: list[Answer | None],
    ) -> None:
        """Propose ``commands`` together; their answers go to ``answers`` at ``slots``, each
        through its conversion in ``converts`` if it has one. Empties the lists."""
        if not self._driver.node.is_leader:
            group: Any = self._driver.not_leader_error()
        else:
            group = await self._driver.propose_many(commands)
        if isinstance(group, BrokerError):
            for slot in slots:
                answers[slot] = Answer(now=group)
        elif converts.count(None) == len(slots) and slots[-1] - slots[0] == len(slots) - 1:
            # (the usual run: appends, ACKs or SEEKs, no refusal between them)
            answers[slots[0] : slots[-1] + 1] = [RunAnswer(group, i) for i in range(len(slots))]
        else:
            for index, (slot, convert) in enumerate(zip(slots, converts, strict=True)):
                if convert is None:
                    answers[slot] = RunAnswer(group, index)
                elif convert is read_answer and type(commands[index]) is ReadNext:
                    answers[slot] = ReadNextAnswer(group, index)
                else:
                    answers[slot] = ConvertedAnswer(group, index, convert)
        commands.clear()
        slots.clear()
        converts.clear()


class ReadNextAnswer(GroupAnswer):
    """The answer to a single READ of a run (a ``ReadNext``): what :class:`ConvertedAnswer`
    with ``read_answer`` answers (``read_answer`` gives a ``ReadNext``'s result as it is, so
    :class:`GroupAnswer`'s ``response_for`` of the result is its answer), its frame written
    straight from the result, without the conversion's calls."""

    __slots__ = ()

    def frame(self) -> bytes | None:
        result = self._group.results[self._index]
        if type(result) is MessageRead:
            sequence_num, data = result.sequence_num, result.data
            if sequence_num is None or type(data) is bytes:
                return message_frame(sequence_num, data)
        return None


class AppendAnswer(Answer):
    """The answer to a lone APPEND of the original contract (:meth:`Runs._handle_one`): its
    proposal's :class:`~._pending.Pending`, and for an appended message its frame written
    straight from the sequence number, as :class:`RunAnswer`'s."""

    __slots__ = ()

    def __init__(self, later: Pending) -> None:
        self._now = None  # (Answer.__init__ without its keywords and its check: one per APPEND)
        self._later = later

    def when_known(self, callback: Callable[[], None]) -> bool:
        # (Pending.when_done written out: asked twice per request at one in flight, by the
        # reader's kick and by the pump its callback runs)
        later: Pending = self._later  # type: ignore[assignment]
        if later._done:
            return False
        later._notify = callback
        return True

    def frame(self) -> bytes | None:
        later: Pending = self._later  # type: ignore[assignment]
        if later._done:
            result = later.result
            if type(result) is MessageAppended and not result.duplicate:
                return appended_frame(result.sequence_num)
        return None


class ConvertedAnswer(Answer):
    """The answer to a request of a run whose result is converted into it (a READ, an append
    with headers): what ``Answer(later=Mapped(group.member(index), convert))`` answers, in one
    object that reads its outcome from the group's list (as :class:`GroupAnswer` does)."""

    __slots__ = ("_convert", "_group", "_index")

    def __init__(self, group: PendingGroup, index: int, convert: Convert) -> None:
        self._now = None  # (no Answer.__init__: the outcome is the group's)
        self._later = None
        self._group = group
        self._index = index
        self._convert = convert

    def known(self) -> Any:
        group, index = self._group, self._index
        return self._response(group.results[index]) if group.done_at(index) else None

    def when_known(self, callback: Callable[[], None]) -> bool:
        group = self._group
        return not group.done_at(self._index) and group.when_done(callback)

    def frame(self) -> bytes | None:
        """A READ's answer, written straight from its result (:func:`read_frame`); None for
        any other."""
        group, index = self._group, self._index
        if self._convert is read_answer and group.done_at(index):
            return read_frame(group.results[index])
        return None

    async def response(self) -> Any:
        group, index = self._group, self._index
        if not group.done_at(index):
            await group.wait()
        return self._response(group.results[index])

    def _response(self, result: Any) -> Any:
        if isinstance(result, BrokerError | CommandRejected):  # as Mapped answers them
            return response_for(result)
        return response_for(self._convert(result))


class ReadAnswer(Answer):
    """The answer to a READ decided alone (``Answer(later=Mapped(pending, read_answer))``,
    the broker's ``_read``), whose frame is written as :class:`ConvertedAnswer` writes it."""

    __slots__ = ()

    def frame(self) -> bytes | None:
        later = self._later
        if type(later) is Mapped and later.convert is read_answer and later.done:
            return read_frame(later.pending.result)
        return None


def read_frame(result: Any) -> bytes | None:
    """A READ's answer written straight from its result, the messages' stored bytes embedded
    as they are: a single message's (or no message's), and the ``messages`` form's, with or
    without headers; None for any other result (the general path encodes it)."""
    kind = type(result)
    if kind is work.Delivered:
        messages = result.messages
        if type(messages) is Deliveries and messages.datas is not None:
            # (a batched READ as its storage read it: columns, no object per message)
            return columns_frame(messages.seqs, messages.datas, messages.headers)
        return messages_frame(messages)
    if kind is MessageRead and (result.sequence_num is None or type(result.data) is bytes):
        return message_frame(result.sequence_num, result.data)
    return None


def read_command_of(request: Read, config: BrokerConfig) -> Any:
    """A READ's command (the messages form reads with headers), or its refusal."""
    command = read_command(request, config)
    if isinstance(command, ReadBatchCommand):  # the messages form: with their headers
        return work.ReadRecords(
            command.client_id,
            command.queue_id,
            command.max_messages,
            command.peek,
            command.max_bytes,
        )
    return command
