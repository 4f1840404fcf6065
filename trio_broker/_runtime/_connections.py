"""Connections: accept, shake hands, authenticate, read requests, write answers in order.

:class:`ConnectionServer` serves the ``handle`` callable it is given, as ``trio.serve_tcp``
serves a handler: it knows framing, sessions, authentication (docs/security.md), TLS, ordering
and backpressure, and nothing of what a request means. ``handle`` decides a request into an
:class:`~._answer.Answer`; the server writes each answer once it is known, in request order.
Every frame of one receive is decided before the next receive, and all the answers known at
that moment leave in one write (docs/performance-history.md, "Batch per receive"): on TCP made by
the task that learns they are known, as it settles them, else by the connection's writer task
(:mod:`._writer`). A TCP connection's receives and writes go through
:class:`~._direct.DirectSocket`: the system call at once, the scheduler only to wait; on
Linux its waits are the broker's own poller's (:mod:`._poller`), which serves a receive of one
lone APPEND itself (:meth:`ConnectionServer._fast_lone`) without waking the connection's task.
A little past the house's ~600 lines: the read loop's cases (limits, authentication, the hand-over
to a peer stream) are one state machine over its locals; split, they would pass a dozen of them.
A connection that opens with PEER_HELLO is handed, once accepted, to ``serve_peer``: from then
on it carries one-way consensus messages.

Limits (docs/reliability.md, "Resource limits"): accepting survives running out of descriptors
(:mod:`._limits`), a frame must arrive whole within ``frame_timeout`` once begun, the bytes
buffered for all connections share one budget (``max_buffered_bytes``), and AUTH failures are
slowed and end the connection after a few (:class:`~._security.AuthThrottle`).

Shutdown (:meth:`ConnectionServer.shutdown`) stops accepting, stops reading new requests, gives
in-flight requests ``shutdown_grace`` seconds to be answered, then cancels what is left.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from itertools import repeat
from typing import Any

import attrs
import trio

from .._auth import new_nonce, proof_is_valid, token_is_valid
from .._errors import BrokerError, ErrorCode, ProtocolError
from .._protocol import (
    PRIVILEGED_REQUESTS,
    Auth,
    AuthChallenge,
    Challenge,
    ClusterQuery,
    Done,
    FrameDecoder,
    FrameTooLarge,
    JoinCluster,
    PeerHello,
    PeerWelcome,
    Request,
    Response,
    encode_frame,
    encode_response,
)
from .._protocol._codec import (
    _APPEND_QUEUE_START,
    OPERATION_NAMES,
    PlainAppend,
    as_request,
    decode_client_request,
)
from .._protocol._receive_appends import decode_plain_appends
from ._answer import Answer
from ._config import BrokerConfig
from ._direct import AVAILABLE as DIRECT_SOCKETS
from ._direct import DirectSocket
from ._limits import (
    BufferBudget,
    DescriptorReserve,
    accept_loop,
    check_descriptor_limit,
)
from ._log import log_event, logger
from ._network import transport_socket
from ._operations import wrong_cluster
from ._outbox import Outbox
from ._poller import AVAILABLE as POLLER_AVAILABLE
from ._poller import PolledSocket, Poller
from ._security import AuthThrottle, Security
from ._writer import AnswerWriter, ObserveBatch

_RECEIVE_SIZE = 64 * 1024
_LINGER_SECONDS = 1.0
TLS_HANDSHAKE_SECONDS = 10.0


@attrs.define
class Session:
    """What one connection has proved (docs/security.md)."""

    plaintext: bool = False
    """Came in on the plaintext listener: client operations only, no authentication."""
    nonce: str | None = None
    """From the last AUTH_CHALLENGE; forgotten once a proof was checked against it."""
    member: bool = False
    """Proved the cluster secret: may send PRIVILEGED_REQUESTS (and client operations)."""
    client: bool = False
    """Presented a valid client token."""


Handle = Callable[[Request, Session], Awaitable[Answer]]
"""Decide one request (authorized already) into its answer."""
HandleLone = Callable[[PlainAppend], Answer | None]
"""Decide the one request of a receive, the original contract's APPEND, at once: its answer,
or None when ``HandleMany`` must decide it (it may wait)."""
HandleMany = Callable[
    [list[Request | PlainAppend], Session, Callable[[list[Answer]], None]], Awaitable[None]
]
"""Decide several requests (authorized already), each as ``Handle`` would decide it alone
(the original contract's APPEND as a :data:`~.._protocol._codec.PlainAppend`, which
``as_request`` turns into the request it stands for),
and give their answers to the callable in request order (the next ones at each call), each as
soon as it and those before it are decided: a cancellation loses no answer to a request
already proposed."""
AcceptPeer = Callable[[PeerHello, str], BrokerError | PeerWelcome | None]
"""Accept a PEER_HELLO (None, or the answer to give) or refuse it; the second argument names
the connection's peer."""
ServePeer = Callable[[trio.abc.Stream, FrameDecoder, str, str], Awaitable[bool]]
"""Read the consensus messages of an accepted peer stream: ``(stream, decoder, peer, sender)``;
True when the peer closed it."""


class ConnectionServer:
    """The connections of one broker, on one or more listeners."""

    def __init__(
        self,
        config: BrokerConfig,
        security: Security,
        *,
        broker_id: str,
        cluster_id: str,
        handle: Handle,
        handle_many: HandleMany | None = None,
        handle_lone: HandleLone | None = None,
        accept_peer: AcceptPeer,
        serve_peer: ServePeer,
        observe: ObserveBatch,
        plaintext_hint: Callable[[BrokerError], BrokerError],
    ) -> None:
        self.config = config
        self.security = security
        self.broker_id = broker_id
        self.cluster_id = cluster_id
        self.hosted_groups: set[str] = set()
        """Other replication groups hosted here (docs/replication.md, "Several leaders"):
        requests naming one pass the cluster check, and ``handle`` routes them to it."""
        self._handle = handle
        self._handle_many = handle_many
        self._handle_lone = handle_lone if handle_many is not None else None
        self._accept_peer = accept_peer
        self._serve_peer = serve_peer
        self._observe = observe
        self._plaintext_hint = plaintext_hint
        self.connections = 0
        self.closing = False
        self._readers: set[trio.CancelScope] = set()
        self._listening: list[trio.CancelScope] = []
        self._idle = trio.Event()
        self._idle.set()
        self.budget = BufferBudget(config.max_buffered_bytes)
        self.auth_throttle = AuthThrottle()
        self._reserve: DescriptorReserve | None = None
        self._serving = 0
        self._limit_checked = False
        self.poller: Poller | None = None
        """Watches the plain-TCP client sockets' receives (:mod:`._poller`), once started."""

    # -- lifetime -------------------------------------------------------------------------------

    async def serve(
        self,
        listeners: list[trio.abc.Listener[Any]],
        connections: trio.Nursery,
        *,
        plaintext: bool = False,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept on ``listeners`` until :meth:`shutdown`; each connection runs in
        ``connections``. ``plaintext``: the listener of clients of the original design."""
        scope = trio.CancelScope()
        self._listening.append(scope)
        if self.closing:
            scope.cancel()
        if not self._limit_checked and any(transport_listener_socket(x) for x in listeners):
            self._limit_checked = True  # real sockets: the host's limit applies
            check_descriptor_limit(self.config.max_connections)
            if POLLER_AVAILABLE and self.poller is None:
                await self.start_poller(connections)
        if self._reserve is None:
            self._reserve = DescriptorReserve()
        self._serving += 1
        handler = functools.partial(self._handle_stream, plaintext=plaintext)
        try:
            with scope:
                async with trio.open_nursery() as accepting:
                    for listener in listeners:
                        accepting.start_soon(self._accept, listener, handler, connections)
                    task_status.started()
        finally:
            self._serving -= 1
            if self._serving == 0 and self._reserve is not None:
                self._reserve.close()
                self._reserve = None

    async def start_poller(self, nursery: trio.Nursery) -> None:
        """Start the task that watches plain-TCP connections' receives (:mod:`._poller`) in
        ``nursery``, the connections': it fails the broker if it fails, and stops with them."""
        self.poller = Poller()
        await nursery.start(self.poller.run)

    async def _accept(
        self, listener: trio.abc.Listener[Any], handler: Any, connections: trio.Nursery
    ) -> None:
        assert self._reserve is not None
        async with listener:
            await accept_loop(listener, handler, connections, self._reserve)

    async def shutdown(self, connections: trio.Nursery) -> None:
        self.closing = True
        for scope in self._listening:
            scope.cancel()
        for scope in list(self._readers):
            scope.cancel()
        with trio.move_on_after(self.config.shutdown_grace):
            await self._idle.wait()
        connections.cancel_scope.cancel()

    # -- one connection -------------------------------------------------------------------------

    async def _handle_stream(self, stream: trio.abc.Stream, *, plaintext: bool = False) -> None:
        peer = _peer_name(stream)
        if self.closing or self.connections >= self.config.max_connections:
            reason = "shutting down" if self.closing else "too many connections"
            log_event(logging.WARNING, "connection.refused", peer=peer, reason=reason)
            with trio.move_on_after(1):
                error = BrokerError(ErrorCode.UNAVAILABLE, f"broker refused connection: {reason}")
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(encode_frame(encode_response(error)))
            await trio.aclose_forcefully(stream)
            return
        self.connections += 1
        self._idle = trio.Event() if self.connections == 1 else self._idle
        try:
            async with stream:
                if isinstance(stream, trio.SSLStream) and not await _tls_handshake(stream, peer):
                    return
                await self._serve_connection(stream, peer, Session(plaintext=plaintext))
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer went away (perhaps mid-answer); nothing of ours is lost
        except* Exception:
            # A bug in serving one connection must not take the broker down with it.
            logger.exception("connection.crashed peer=%s", peer)
        finally:
            self.connections -= 1
            if self.connections == 0:
                self._idle.set()

    async def _serve_connection(self, stream: trio.abc.Stream, peer: str, session: Session) -> None:
        # Answers leave in request order. A request is dispatched only once it has a slot among
        # max_in_flight, so a command is never submitted without a place for its answer.
        # Bytes buffered (requests read, answers not yet written) count against one budget
        # for all connections (config.max_buffered_bytes).
        outbox = Outbox(self.budget.account())
        peer_closed = False
        io: trio.abc.Stream | DirectSocket = stream
        if DIRECT_SOCKETS and type(stream) is trio.SocketStream:
            poller = self.poller
            if poller is not None and poller.running:
                io = PolledSocket(stream, poller)
            else:
                io = DirectSocket(stream)
        writer = AnswerWriter(
            io,
            outbox,
            observe=self._observe,
            plaintext_hint=self._plaintext_hint if session.plaintext else None,
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer.run)
                try:
                    with trio.CancelScope() as reading:
                        self._readers.add(reading)
                        try:
                            peer_closed = await self._read_requests(
                                stream, io, peer, outbox, writer, session
                            )
                        finally:
                            self._readers.discard(reading)
                finally:
                    if type(io) is PolledSocket:
                        io.detach()  # (before the stream closes)
                    outbox.close()  # the writer ends once what is left is written
                    writer.kick()
        finally:
            if type(io) is PolledSocket:
                io.detach()  # (ended before its reading began: still before the stream closes)
            outbox.account.close()
        if not peer_closed:
            await _linger(stream)

    async def _read_requests(
        self,
        stream: trio.abc.Stream,
        io: trio.abc.Stream | DirectSocket,
        peer: str,
        outbox: Outbox,
        writer: AnswerWriter,
        session: Session,
    ) -> bool:
        """Read and dispatch requests; True when the peer closed, False when we stopped.
        ``io`` receives from ``stream`` (:class:`~._direct.DirectSocket` for a TCP stream).

        Every frame of one receive is decided before the next receive, and their answers
        queue in ``outbox`` in request order; the writer wakes once for them all, not once
        per request, and writes every answer that is known in one ``send_all`` (on TCP, the
        answers known are written at once, without waking it: :mod:`._writer`)."""
        decoder = FrameDecoder(self.config.max_frame)
        max_in_flight = self.config.max_in_flight
        account = outbox.account
        handle = self._handle
        handle_many = self._handle_many
        handle_lone = self._handle_lone
        authorize = self._authorize
        run: list[Request | PlainAppend] = []
        """Requests of this receive let through to ``handle``, not yet decided: decided
        together (``handle_many``) before anything else is queued, and before any wait."""
        run_info: list[tuple[str, float, int]] = []
        given = 0
        """Answers of ``run`` given by ``handle_many`` so far (to ``answered``)."""

        def answered(answers: list[Answer]) -> None:
            # (made once per connection, not per run: one run is decided at a time)
            nonlocal given
            if len(answers) == 1:  # (a receive of one request: put costs a fifth)
                operation, began, held = run_info[given]
                outbox.put(operation, began, answers[0], held)
                given += 1
                return
            start, given = given, given + len(answers)
            outbox.put_many(run_info[start:given], answers)

        async def decide_run() -> None:
            nonlocal given
            if outbox.answers:
                # Deciding may wait (for capacity, storage, another broker): the answers
                # before these must not wait with them.
                writer.kick()
            if handle_many is None:
                for request, (operation, began, held) in zip(run, run_info, strict=True):
                    answer = await handle(as_request(request), session)
                    outbox.put(operation, began, answer, held)
            else:
                given = 0
                await handle_many(run, session, answered)
                assert given == len(run), "a request of the run was not answered"
            run.clear()
            run_info.clear()

        polled = io if type(io) is PolledSocket else None
        if polled is not None and handle_lone is not None:
            polled.fast = self._fast_lone(polled, decoder, outbox, writer, session, handle_lone)

        frame_began: float | None = None
        """When the frame partly buffered began to wait for the rest (None: between frames)."""
        auth_failures = 0
        client_requests = _CLIENT_REQUESTS
        while True:
            writer.kick()  # what this receive decided goes out while we wait for more
            data = None
            if decoder.buffered:  # a frame begun must arrive whole within frame_timeout
                if frame_began is None:
                    frame_began = trio.current_time()
                with trio.move_on_at(frame_began + self.config.frame_timeout):
                    data = await io.receive_some(_RECEIVE_SIZE)
            else:  # between frames: no deadline, and no cancel scope to set up for none
                data = await io.receive_some(_RECEIVE_SIZE)
            if data is None:
                log_event(
                    logging.WARNING,
                    "connection.frame_timeout",
                    peer=peer,
                    buffered=decoder.buffered,
                    seconds=self.config.frame_timeout,
                )
                return False
            if not data:
                if decoder.buffered:
                    log_event(
                        logging.INFO,
                        "connection.truncated_frame",
                        peer=peer,
                        buffered=decoder.buffered,
                    )
                return True
            # A receive that is one whole frame (one request in flight) is taken at once;
            # any other is buffered and cut frame by frame (docs/performance-history.md, "The leader
            # loop per request").
            whole = decoder.take_whole(data)
            last = whole is not None
            """The receive was one whole frame: no frame follows it."""
            decoded = None
            """``whole``'s request, decoded already by the poller, which handed it here."""
            if polled is not None and polled.decoded is not None:
                if last and polled.decoded[0] is data:
                    decoded = polled.decoded[1]
                polled.decoded = None
            started = time.perf_counter()  # the frames of one receive arrived together
            # A client request needs no check (``_authorize``'s first case): asked once per
            # receive, and again after every request that takes the checks (AUTH changes it).
            open_session = self._lets_clients_through(session)
            if not last and open_session and handle_many is not None and not run:
                # The pipelined receive: APPENDs only, decoded in one parse, charged in one
                # take, decided as one run (what the loop below does frame by frame); any
                # other receive is given back to the decoder, for the loop.
                mark = decoder.mark()
                frames = _whole_frames(decoder)
                plain = None
                if len(frames) > 1 and outbox.in_flight + len(frames) <= max_in_flight:
                    plain = decode_plain_appends(frames)
                charged = sum(map(len, frames))
                # (within the limit itself: ``take`` lets a connection that holds nothing
                # take any amount, meant for one frame, not a whole receive)
                budget = account.budget
                if (
                    plain is not None
                    and budget.used + charged <= budget.limit
                    and account.take(charged)
                ):
                    frame_began = None
                    run.extend(plain)
                    run_info.extend(zip(repeat("APPEND"), repeat(started), map(len, frames)))
                    await decide_run()  # (then any frame too large: next_frame raises again)
                else:
                    decoder.rewind(mark)
            while True:
                if whole is not None:
                    payload: bytes | None = whole
                    whole = None
                else:
                    payload = None
                    if not last:
                        try:
                            payload = decoder.next_frame()
                        except FrameTooLarge as exc:
                            if run:
                                await decide_run()
                            # The stream cannot be resynchronised: answer, then close.
                            _log_rejected(peer, exc)
                            writer.kick()
                            await outbox.wait_for_slot(max_in_flight)
                            outbox.put("INVALID", started, Answer(now=exc), 0)
                            return False
                    if payload is None:
                        if run:
                            await decide_run()
                        break
                frame_began = None
                if outbox.in_flight + len(run) >= max_in_flight:
                    if run:
                        await decide_run()
                    writer.kick()
                    await outbox.wait_for_slot(max_in_flight)
                charged = len(payload)
                if not account.take(charged):
                    if run:
                        await decide_run()
                    log_event(
                        logging.INFO,
                        "connection.paused_for_memory",
                        peer=peer,
                        held=account.held,
                        buffered=self.budget.used,
                        budget=self.budget.limit,
                    )
                    writer.kick()  # what this connection holds must be able to leave
                    await account.acquire(charged)
                try:
                    request = decoded if decoded is not None else decode_client_request(payload)
                except ProtocolError as exc:
                    _log_rejected(peer, exc)
                    if run:
                        await decide_run()
                    outbox.put("INVALID", started, Answer(now=exc), charged)
                    continue
                kind = type(request)
                if kind is tuple:  # the original contract's APPEND (PlainAppend)
                    if open_session:
                        if last and handle_lone is not None:
                            # The receive's one request (one in flight): decided at once,
                            # no run and no coroutine, unless it may wait (None; asked
                            # already by the poller, which then handed the receive here).
                            if polled is not None and polled.lone_refused:
                                polled.lone_refused = False
                            else:
                                answer = handle_lone(request)  # type: ignore[arg-type]
                                if answer is not None:
                                    outbox.put("APPEND", started, answer, charged)
                                    continue
                        run.append(request)
                        run_info.append(("APPEND", started, charged))
                        continue
                    request = as_request(request)  # (the checks below take requests)
                    kind = type(request)
                operation = OPERATION_NAMES[kind]
                if open_session and kind in client_requests:
                    run.append(request)
                    run_info.append((operation, started, charged))
                    continue
                assert not isinstance(request, tuple)  # (turned into its Append above)
                early = authorize(request, session, peer)
                open_session = self._lets_clients_through(session)
                if early is None and kind is not PeerHello:
                    run.append(request)
                    run_info.append((operation, started, charged))
                    continue
                if run:
                    await decide_run()
                if isinstance(request, Auth) and isinstance(early, BrokerError):
                    auth_failures += 1
                    writer.kick()
                    if not await self._slow_auth_failure(peer, auth_failures):
                        return False
                    outbox.put(operation, started, Answer(now=early), charged)
                    if auth_failures >= self.auth_throttle.per_connection:
                        log_event(
                            logging.WARNING,
                            "connection.auth_failures",
                            peer=peer,
                            failures=auth_failures,
                            action="closed",
                        )
                        return False
                    continue
                if early is not None:
                    outbox.put(operation, started, Answer(now=early), charged)
                    if isinstance(request, PeerHello) and isinstance(early, BrokerError):
                        return False  # what follows would be consensus messages
                    continue
                assert isinstance(request, PeerHello)
                accepted = self._accept_peer(request, peer)
                outbox.put(operation, started, Answer(now=accepted or Done()), charged)
                if isinstance(accepted, BrokerError):
                    return False
                writer.kick()
                if type(io) is PolledSocket:
                    io.detach()  # (the peer stream's reader waits through trio)
                return await self._serve_peer(stream, decoder, peer, request.broker_id)

    def _fast_lone(
        self,
        polled: PolledSocket,
        decoder: FrameDecoder,
        outbox: Outbox,
        writer: AnswerWriter,
        session: Session,
        handle_lone: HandleLone,
    ) -> Callable[[bytes], bool]:
        """What the poller calls with a receive while the connection's task waits for one
        (:mod:`._poller`): a receive of one whole frame, the original contract's APPEND,
        that ``handle_lone`` decides at once, is served as :meth:`_read_requests` would serve
        it (True); anything else is left untouched (False) for the task to read, but for
        ``polled.lone_refused``: ``handle_lone`` answered None, the task does not ask again;
        and ``polled.decoded``: a request decoded here is not decoded again by the task
        (a lone APPEND on a broker of several groups, about 1.1 µs)."""
        max_frame = decoder.max_frame
        max_in_flight = self.config.max_in_flight
        account = outbox.account
        lets_through = self._lets_clients_through
        start = _APPEND_QUEUE_START

        def fast(data: bytes) -> bool:
            size = len(data) - 4
            if (
                decoder.buffered
                or size > max_frame
                or outbox.in_flight >= max_in_flight
                or int.from_bytes(data[:4], "big") != size
                or not data.startswith(start, 4)
                or not lets_through(session)
            ):
                return False
            started = time.perf_counter()
            payload = data[4:]
            try:
                request = decode_client_request(payload)
            except ProtocolError:
                return False
            if type(request) is not tuple or not account.take(size):
                polled.decoded = (data, request)  # (not decoded again by the task)
                return False
            answer = handle_lone(request)
            if answer is None:
                account.release(size)
                polled.lone_refused = True
                polled.decoded = (data, request)
                return False
            outbox.put("APPEND", started, answer, size)
            writer.kick()
            return True

        return fast

    async def _slow_auth_failure(self, peer: str, failures: int) -> bool:
        """Wait before answering an AUTH failure; False: close without answering."""
        address = peer.rsplit(":", 1)[0]
        delay = self.auth_throttle.failed(address, failures, trio.current_time())
        if delay is None:
            log_event(
                logging.WARNING,
                "connection.auth_failures",
                peer=peer,
                failures=self.auth_throttle.failures(address),
                action="closed unanswered: this address has too many failures waiting",
            )
            return False
        await trio.sleep(delay)
        return True

    # -- authentication -------------------------------------------------------------------------

    def _authorize(
        self, request: Request, session: Session, peer: str
    ) -> Response | BrokerError | None:
        """Answer AUTH_CHALLENGE and AUTH, and refuse what this connection may not send
        (docs/security.md); None lets the request through to ``handle``."""
        security = self.security
        if type(request) in _CLIENT_REQUESTS and self._lets_clients_through(session):
            return None  # (what the checks below conclude for these, without them)
        if isinstance(request, AuthChallenge | Auth) and session.plaintext:
            return self._unauthorized(
                peer, request, "the plaintext listener serves client operations only"
            )
        if isinstance(request, AuthChallenge):
            session.nonce = new_nonce()
            return Challenge(nonce=session.nonce)
        if isinstance(request, Auth):
            return self._authenticate(request, session, peer)
        if isinstance(request, PRIVILEGED_REQUESTS):
            if session.plaintext:
                return self._unauthorized(
                    peer,
                    request,
                    "operator and broker-to-broker requests are not served on this listener",
                )
            if security.secret is not None and not session.member:
                return self._unauthorized(
                    peer, request, "this request needs the cluster secret (AUTH with a proof)"
                )
            asked = getattr(request, "cluster_id", None)
            refusal = None if asked in self.hosted_groups else wrong_cluster(self.cluster_id, asked)
            if refusal is not None:
                log_event(
                    logging.WARNING,
                    "request.wrong_cluster",
                    peer=peer,
                    operation=OPERATION_NAMES[type(request)],
                    cluster_id=getattr(request, "cluster_id", None),
                )
            return refusal
        if isinstance(request, ClusterQuery) or session.plaintext:
            return None
        if security.tokens is not None and not (session.client or session.member):
            return self._unauthorized(peer, request, "this broker needs a client token (AUTH)")
        return None

    def _lets_clients_through(self, session: Session) -> bool:
        """Whether the client requests of ``session`` (:data:`_CLIENT_REQUESTS`) need no
        check: the connection needs no token, or has proved one or the secret."""
        return session.plaintext or self.security.tokens is None or session.client or session.member

    def _authenticate(self, request: Auth, session: Session, peer: str) -> Response | BrokerError:
        if (request.proof is None) == (request.token is None):
            return ProtocolError("AUTH carries either a proof or a token")
        if request.proof is not None:
            nonce, session.nonce = session.nonce, None  # one proof per nonce: no replay
            if self.security.secret is None:
                return self._unauthorized(
                    peer,
                    request,
                    "this broker has no cluster secret (every member needs the same one)",
                )
            if nonce is None:
                return self._unauthorized(peer, request, "no nonce to prove: AUTH_CHALLENGE first")
            if not proof_is_valid(self.security.secret, nonce, request.proof):
                return self._unauthorized(
                    peer, request, "wrong cluster secret: the proof does not match this cluster's"
                )
            session.member = True
            return Done()
        assert request.token is not None
        tokens = self.security.tokens
        if tokens is not None and not token_is_valid(tokens, request.token):
            return self._unauthorized(peer, request, "client token refused")
        session.client = True
        return Done()

    def _unauthorized(self, peer: str, request: Request, reason: str) -> BrokerError:
        fields = {"peer": peer, "operation": OPERATION_NAMES[type(request)]}
        if isinstance(request, PeerHello | JoinCluster):
            fields["broker"] = request.broker_id
        log_event(logging.WARNING, "request.unauthorized", **fields, reason=reason)
        return BrokerError(ErrorCode.UNAUTHORIZED, reason)


_CLIENT_REQUESTS = frozenset(
    cls
    for cls in OPERATION_NAMES
    if cls not in (Auth, AuthChallenge) and not issubclass(cls, PRIVILEGED_REQUESTS)
)
"""Requests any client may send: let through at once when the connection needs no token or
has proved one."""


def _log_rejected(peer: str, exc: ProtocolError | FrameTooLarge) -> None:
    """A request refused as it arrived: one WARNING with its code and reason."""
    log_event(logging.WARNING, "request.rejected", peer=peer, code=exc.code, reason=exc.message)


async def _linger(stream: trio.abc.Stream) -> None:
    """Close our side first and drain theirs, so the kernel does not reset the connection
    (which would discard answers the peer has not read yet) because of unread requests."""
    if not isinstance(stream, trio.abc.HalfCloseableStream):
        return  # TLS has no half-close: closing sends close_notify after the answers
    with trio.move_on_after(_LINGER_SECONDS):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_eof()
            while await stream.receive_some(_RECEIVE_SIZE):
                pass


async def _tls_handshake(stream: trio.SSLStream[Any], peer: str) -> bool:
    """Shake hands before reading requests, so that a client that does not speak TLS (or does
    not trust our certificate) is logged as such, and a silent one does not hold a slot."""
    reason = None
    with trio.move_on_after(TLS_HANDSHAKE_SECONDS) as scope:
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            reason = str(exc.__cause__ or exc)
    if scope.cancelled_caught:
        reason = f"no handshake within {TLS_HANDSHAKE_SECONDS:g} s"
    if reason is not None:
        log_event(logging.INFO, "connection.tls_failed", peer=peer, reason=reason)
        return False
    return True


def transport_listener_socket(listener: trio.abc.Listener[Any]) -> Any:
    """The socket a listener accepts on (through TLS), or None (an in-memory listener)."""
    while isinstance(listener, trio.SSLListener):
        listener = listener.transport_listener
    return getattr(listener, "socket", None)


def _peer_name(stream: trio.abc.Stream) -> str:
    sock = transport_socket(stream)
    if sock is None:
        return getattr(stream, "peer_name", "unknown")
    try:
        host, port, *_ = sock.getpeername()
    except OSError:
        return "unknown"
    return f"{host}:{port}"


def _whole_frames(decoder: FrameDecoder) -> list[bytes]:
    """Every whole frame ``decoder`` holds now, in order, up to a frame too large (left for
    ``next_frame`` to raise again); only the first when it is not an APPEND (the frames are
    then given back: no receive of other requests is cut twice)."""
    frames: list[bytes] = []
    next_frame = decoder.next_frame
    try:
        frame = next_frame()
        if frame is None or not frame.startswith(_APPEND_QUEUE_START):
            return [] if frame is None else [frame]
        frames.append(frame)
        while (frame := next_frame()) is not None:
            frames.append(frame)
    except FrameTooLarge:
        pass
    return frames
