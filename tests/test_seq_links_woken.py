"""A link whose writer was woken but has not run yet, written by the caller
(``_Link.write_now``): what the caller's write leaves (a partial write) is finished by the
link's task before anything else, after the messages queued first; a socket closed under the
caller's write costs the messages (the link reconnects; consensus resends), never an exception
in the caller or a write left for a closed link. Orders and states, never timings."""

from __future__ import annotations

import collections

import trio
import trio.testing

from tests.test_seq_links import _beat, _os_writing, _until, _with_a_peer
from trio_broker._runtime import _peer_mux


async def test_a_partial_write_on_a_woken_link_is_finished_by_its_task_in_order(monkeypatch):
    """The writer is woken by a heartbeat's answer queued first; the caller writes it with its
    own two messages, and the socket takes half: the writer (woken already, so not woken
    again) sends the rest before anything queued after, and the peer reads each once, in
    order."""
    real_write = _peer_mux.os.write
    outcomes = collections.deque(["half"])
    states: list[tuple[bool, bool, bool]] = []

    def write(fd: int, data: bytes) -> int:
        if outcomes and outcomes.popleft() == "half":
            return real_write(fd, bytes(data[: len(data) // 2]))
        return real_write(fd, data)

    async def body(links: _peer_mux.GroupLinks, received: list) -> None:
        (link,) = links.mux._links.values()
        monkeypatch.setattr(_peer_mux, "os", _os_writing(write))
        links.send(_beat(0))  # (wakes the link's task: it has taken nothing yet)
        woken = link._more is None and not link._sending
        answer = links.send_at_once([_beat(1), _beat(2)])
        states.append((woken, answer, link._leftover is not None))
        links.send(_beat(3))  # (after the rest)
        await _until(lambda: len(received) == 4)
        await trio.testing.wait_all_tasks_blocked()

    received = await _with_a_peer(body)
    assert states == [(True, False, True)]
    assert [m.commit for m in received] == [0, 1, 2, 3]


async def test_a_socket_closed_under_a_woken_links_caller_raises_nothing():
    """The link's socket is closed (as a reset would leave it) while its writer is woken and
    has not run: the caller's write finds no descriptor, hands what it took to the link's
    task and says so (False); the link then drops it with the connection and nothing is left
    pending for the next one."""
    states: list[tuple[bool, bool]] = []

    async def body(links: _peer_mux.GroupLinks, received: list) -> None:
        (link,) = links.mux._links.values()
        sock = link._socket
        assert sock is not None
        links.send(_beat(0))  # (wakes the link's task)
        trio.lowlevel.notify_closing(sock)
        sock.close()
        states.append((links.send_at_once([_beat(1)]), link._leftover is not None))
        await _until(lambda: not link.connected)
        await trio.testing.wait_all_tasks_blocked()
        states.append((link._leftover is None, not link._sending))

    await _with_a_peer(body)
    assert states == [(False, True), (True, True)]
