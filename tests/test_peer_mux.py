"""One peer link per pair of brokers, shared by every replication group (docs/replication.md,
"Peer links"): frames tagged with ``group_id`` reach their group, a group's share of the outbox
keeps a busy group from starving the others, an older peer still gets the cluster group's
messages, and groups register and unregister at run time."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import trio
import trio.testing

from trio_broker._core import _raft_messages as rm
from trio_broker._errors import RemoteProtocolError
from trio_broker._protocol import FrameDecoder, encode_frame, loads_object
from trio_broker._protocol._consensus import encode_message, message_from_frame
from trio_broker._runtime import _peer_mux
from trio_broker._runtime._peer_mux import PeerMux
from trio_broker._runtime._peers import read_peer_stream

HOME, GA, GB = "G-HOME0", "G-AAAAA", "G-BBBBB"
WELCOME = b'{"status":"success","multiplexed":true}'
OLD_ANSWER = b'{"status":"success"}'


def heartbeat(commit: int, dst: str = "B-2") -> rm.Heartbeat:
    return rm.Heartbeat(src="B-1", dst=dst, term=2, cluster_version=1, commit=commit)


class FakePeer:
    """The other end of each connection a mux opens: answers PEER_HELLO with ``answer`` and
    records every frame as ``(connection number, group_id, message)``, and each receive."""

    def __init__(self, answer: bytes = WELCOME) -> None:
        self.answer = answer
        self.hellos: list[dict[str, Any]] = []
        self.frames: list[tuple[int, str | None, rm.Message]] = []
        self.receives = 0
        self.reading = trio.Event()
        self.reading.set()
        self.streams: list[trio.abc.Stream] = []
        self.nursery: trio.Nursery | None = None

    async def connect(self, _host: str, _port: int) -> trio.abc.Stream:
        ours, theirs = trio.testing.memory_stream_pair()
        assert self.nursery is not None
        self.streams.append(theirs)
        self.nursery.start_soon(self._serve, len(self.streams), theirs)
        return ours

    async def _serve(self, number: int, stream: trio.abc.Stream) -> None:
        decoder = FrameDecoder()
        with trio.move_on_after(1000):
            while (payload := decoder.next_frame()) is None:
                decoder.feed(await stream.receive_some())
            self.hellos.append(loads_object(payload))
            await stream.send_all(encode_frame(self.answer))
            while True:
                await self.reading.wait()
                while (payload := decoder.next_frame()) is not None:
                    self.frames.append((number, *message_from_frame(loads_object(payload))))
                try:
                    data = await stream.receive_some()
                except trio.ClosedResourceError:
                    return
                if not data:
                    return
                self.receives += 1
                decoder.feed(data)

    def of(self, group_id: str | None) -> list[rm.Message]:
        return [m for _, g, m in self.frames if g == group_id]


def open_mux(nursery: trio.Nursery, peer: FakePeer) -> PeerMux:
    peer.nursery = nursery
    return PeerMux("B-1", HOME, nursery, ("127.0.0.1", 1), peer.connect, dead_after=1.0)


def book(_peer: str) -> tuple[str, int]:
    return ("127.0.0.1", 2)


async def until(predicate) -> None:
    """Wait (at most 10 virtual seconds) until ``predicate()`` holds."""
    with trio.fail_after(10):
        while True:
            if predicate():
                return
            await trio.sleep(0.01)


async def connected(mux: PeerMux, peer: str = "B-2") -> None:
    await until(lambda: any(link.connected for link in mux.statistics().links if link.peer == peer))


# -- the frames -----------------------------------------------------------------------------


def test_a_frame_names_its_group_and_a_frame_without_one_names_none():
    message = heartbeat(3)
    tagged = orjson.loads(encode_message(message, GA))
    assert tagged["group_id"] == GA
    assert message_from_frame(tagged) == (GA, message)
    plain = orjson.loads(encode_message(message))
    assert "group_id" not in plain
    assert message_from_frame(plain) == (None, message)


@pytest.mark.parametrize("bad", [7, "", "G-abcde", "B-00001", ["G-AAAAA"], "G-AAAAAA"])
def test_a_malformed_group_id_is_the_peers_fault(bad):
    obj = orjson.loads(encode_message(heartbeat(1)))
    obj["group_id"] = bad
    with pytest.raises(RemoteProtocolError, match="group_id"):
        message_from_frame(obj)


async def test_a_peer_stream_hands_each_frame_to_the_group_it_names():
    """Untagged: the group the PEER_HELLO named; tagged: that group; a group not hosted
    here: dropped, and what follows is still read."""
    sender, receiver = trio.testing.memory_stream_pair()
    home, a = [], []
    routes = {GA: a.append}
    frames = [
        encode_message(heartbeat(1)),
        encode_message(heartbeat(2), GA),
        encode_message(heartbeat(3), GB),  # not hosted
        encode_message(heartbeat(4), GA),
        encode_message(heartbeat(5)),
    ]
    await sender.send_all(b"".join(encode_frame(f) for f in frames))
    await sender.aclose()
    with trio.fail_after(5):
        closed = await read_peer_stream(
            receiver,
            FrameDecoder(),
            home.append,
            peer="p",
            sender="B-1",
            self_id="B-2",
            max_frame=1 << 20,
            step_of=routes.get,
        )
    assert closed is True
    assert [m.commit for m in home] == [1, 5]
    assert [m.commit for m in a] == [2, 4]


async def test_a_frame_with_a_malformed_group_id_ends_the_stream_after_what_came_before():
    sender, receiver = trio.testing.memory_stream_pair()
    home = []
    bad = orjson.loads(encode_message(heartbeat(2)))
    bad["group_id"] = "not a group"
    frames = [encode_message(heartbeat(1)), orjson.dumps(bad), encode_message(heartbeat(3))]
    await sender.send_all(b"".join(encode_frame(f) for f in frames))
    with trio.fail_after(5):
        closed = await read_peer_stream(
            receiver,
            FrameDecoder(),
            home.append,
            peer="p",
            sender="B-1",
            self_id="B-2",
            max_frame=1 << 20,
            step_of=lambda _group: home.append,
        )
    assert closed is False  # (the caller closes the connection)
    assert [m.commit for m in home] == [1]


# -- the outbound links ---------------------------------------------------------------------


async def test_every_groups_messages_share_one_connection_and_one_write(autojump_clock):
    peer = FakePeer()
    async with trio.open_nursery() as nursery:
        mux = open_mux(nursery, peer)
        links = {g: mux.register(g, book) for g in (HOME, GA, GB)}
        for group_links in links.values():
            group_links.ensure({"B-2"})
        await connected(mux)
        for i, (_group, group_links) in enumerate(sorted(links.items())):
            group_links.send(heartbeat(i))
        await trio.testing.wait_all_tasks_blocked()
        (stats,) = mux.statistics().links
        assert stats.multiplexed and stats.groups == (GA, GB, HOME)
        assert peer.hellos[0]["multiplexed"] is True and peer.hellos[0]["cluster_id"] == HOME
        assert len(peer.streams) == 1
        # The home group's frame names no group (as from older brokers); the others' do.
        assert sorted((g or "", m.commit) for _, g, m in peer.frames) == [
            ("", 2),
            (GA, 0),
            (GB, 1),
        ]
        assert stats.writes == 1 and peer.receives == 1  # the three in one write
        nursery.cancel_scope.cancel()


async def test_a_busy_group_fills_its_share_and_the_others_still_go(autojump_clock):
    """A group queueing far more than its share drops its own excess (counted for it alone);
    another group's messages are admitted, and leave in the first write beside it."""
    peer = FakePeer()
    peer.reading = trio.Event()  # the peer reads nothing for now
    async with trio.open_nursery() as nursery:
        mux = open_mux(nursery, peer)
        busy, quiet = mux.register(HOME, book), mux.register(GA, book)
        busy.ensure({"B-2"})
        quiet.ensure({"B-2"})
        await connected(mux)
        share, _ = mux.share()
        assert share == _peer_mux.OUTBOX_SIZE // 2
        flood = 5 * share
        for i in range(flood):
            busy.send(heartbeat(i))
        for i in range(5):
            quiet.send(heartbeat(10_000 + i))
        assert busy.statistics().dropped("B-2") == flood - share
        assert quiet.statistics().dropped("B-2") == 0
        peer.reading.set()
        await until(lambda: len(peer.frames) >= share + 5)
        first = _peer_mux.BATCH
        assert [m.commit for m in peer.of(GA)] == [10_000 + i for i in range(5)]
        # The quiet group's messages were in the first write, not behind the busy backlog.
        assert max(i for i, (_, g, _m) in enumerate(peer.frames) if g == GA) < first
        assert [m.commit for m in peer.of(None)] == list(range(share))
        nursery.cancel_scope.cancel()


async def test_a_large_message_into_an_empty_share_is_never_refused(autojump_clock):
    peer = FakePeer()
    async with trio.open_nursery() as nursery:
        mux = open_mux(nursery, peer)
        links = mux.register(HOME, book)
        links.ensure({"B-2"})
        await connected(mux)
        entries = (rm.Entry(2, 1, rm.NoOp()),)
        big = rm.Replicate(
            src="B-1",
            dst="B-2",
            term=2,
            cluster_version=1,
            prev_log_index=0,
            prev_log_term=0,
            leader_commit=0,
            entries=entries,
        )
        original = _peer_mux.OUTBOX_BYTES
        _peer_mux.OUTBOX_BYTES = 10  # (smaller than any message)
        try:
            links.send(big)
            links.send(big)  # beyond the share: dropped
        finally:
            _peer_mux.OUTBOX_BYTES = original
        await trio.testing.wait_all_tasks_blocked()
        assert peer.of(None) == [big]
        assert links.statistics().dropped("B-2") == 1
        nursery.cancel_scope.cancel()


async def test_an_older_peer_gets_each_other_group_on_a_link_of_its_own(autojump_clock):
    """A peer that answers the hello without ``multiplexed`` gets the cluster group's frames
    on the link, untagged, and every other group's on a connection of its own whose hello
    names that group, untagged too: what brokers of its version send and read."""
    peer = FakePeer(answer=OLD_ANSWER)
    async with trio.open_nursery() as nursery:
        mux = open_mux(nursery, peer)
        home, other = mux.register(HOME, book), mux.register(GA, book)
        home.ensure({"B-2"})
        other.ensure({"B-2"})
        await connected(mux)
        assert not mux.statistics().links[0].multiplexed
        other.send(heartbeat(99))  # (opens GA's own link: dropped until it is connected)
        await until(lambda: other.statistics().any_connected and len(peer.hellos) == 2)
        assert mux.statistics().links[0].own_links == (GA,)
        assert peer.hellos[1]["cluster_id"] == GA
        for i in range(3):
            home.send(heartbeat(i))
            other.send(heartbeat(100 + i))
        await trio.testing.wait_all_tasks_blocked()
        assert sorted((n, g, m.commit) for n, g, m in peer.frames) == [
            (1, None, 0),
            (1, None, 1),
            (1, None, 2),
            (2, None, 100),  # no group_id: the hello of connection 2 named GA
            (2, None, 101),
            (2, None, 102),
        ]
        assert other.statistics().dropped("B-2") == 1
        # The group closed: its own link closes too; the cluster group's stays.
        mux.unregister(GA)
        await trio.testing.wait_all_tasks_blocked()
        assert mux.statistics().links[0].own_links == ()
        assert mux.statistics().links[0].connected
        nursery.cancel_scope.cancel()


async def test_a_lost_link_reconnects_and_carries_every_group_again(autojump_clock):
    peer = FakePeer()
    async with trio.open_nursery() as nursery:
        mux = open_mux(nursery, peer)
        links = {g: mux.register(g, book) for g in (HOME, GA, GB)}
        for group_links in links.values():
            group_links.ensure({"B-2"})
        await connected(mux)
        await peer.streams[0].aclose()  # the peer goes away
        await until(lambda: len(peer.streams) == 2 and mux.statistics().links[0].connected)
        for i, group_links in enumerate(links.values()):
            group_links.send(heartbeat(i))
        await trio.testing.wait_all_tasks_blocked()
        assert sorted((n, g or "") for n, g, _ in peer.frames) == [(2, ""), (2, GA), (2, GB)]
        assert len(peer.hellos) == 2
        nursery.cancel_scope.cancel()


async def test_groups_register_and_unregister_at_run_time(autojump_clock):
    """A closed group's queued messages are dropped and its later sends ignored; the link
    stays while another group wants it, and closes with the last one."""
    peer = FakePeer()
    peer.reading = trio.Event()
    async with trio.open_nursery() as nursery:
        mux = open_mux(nursery, peer)
        home, a = mux.register(HOME, book), mux.register(GA, book)
        home.ensure({"B-2"})
        a.ensure({"B-2"})
        await connected(mux)
        assert mux.share()[0] == _peer_mux.OUTBOX_SIZE // 2
        link = mux._links["B-2"]
        a.send(heartbeat(1))
        a.send(heartbeat(2))
        mux.unregister(GA)
        assert mux.groups == (HOME,)
        assert mux.share()[0] == _peer_mux.OUTBOX_SIZE  # the shares follow the groups
        assert GA not in link.queues and GA not in link.dropped
        a.send(heartbeat(3))
        a.ensure({"B-2"})
        assert mux.statistics().links[0].groups == (HOME,)
        peer.reading.set()
        home.send(heartbeat(4))
        await trio.testing.wait_all_tasks_blocked()
        assert [(g, m.commit) for _, g, m in peer.frames] == [(None, 4)]
        # Opened again: it sends again, on the same connection.
        again = mux.register(GA, book)
        again.send(heartbeat(5))
        await trio.testing.wait_all_tasks_blocked()
        assert peer.of(GA) == [heartbeat(5)] and len(peer.streams) == 1
        # The closing of an older replica of the group leaves the new one registered.
        mux.unregister(GA, a)
        assert mux.groups == (GA, HOME) and again.registered and not a.registered
        mux.unregister(GA, again)
        mux.unregister(HOME)
        assert mux.statistics().links == ()
        await trio.testing.wait_all_tasks_blocked()
        assert link.cancel_scope.cancel_called
        nursery.cancel_scope.cancel()


async def test_one_timer_ticks_every_group_at_the_same_instants(autojump_clock):
    peer = FakePeer()
    async with trio.open_nursery() as nursery:
        mux = open_mux(nursery, peer)
        seen: dict[str, list[float]] = {"a": [], "b": []}

        def recorder(name):
            return lambda ticks: seen[name].extend([trio.current_time()] * ticks)

        with mux.ticking(0.1, recorder("a")):
            await trio.sleep(0.05)
            with mux.ticking(0.1, recorder("b")):
                await trio.sleep(0.31)
            assert len(seen["b"]) == 3
            await trio.sleep(0.2)
        await trio.sleep(0.5)
        assert len(seen["a"]) == 5  # (none once out of the block)
        assert set(seen["b"]) <= set(seen["a"])  # the same instants: one wake-up for both
        assert mux._tickers == {}  # the timer ended with its last callback
        nursery.cancel_scope.cancel()
