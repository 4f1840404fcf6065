"""A lone request the connections' poller decodes and then leaves to its connection's task (a
lone APPEND ``handle_lone`` answers None for, as on a broker of several groups; an APPEND with
headers) is decoded once: the task takes the request the poller decoded. Every answer still
comes, in order; a receive that is not the one the poller decoded is decoded by the task."""

from __future__ import annotations

import trio

from tests.test_poller_connections import (
    DEADLINE,
    Decisions,
    _append,
    _connect,
    _server,
    _serving,
    pytestmark,  # noqa: F401  (skipped where there is no epoll)
)


async def test_a_lone_request_left_to_the_task_is_decoded_once(decodes: list[bytes]) -> None:
    decisions = Decisions()
    server = _server(decisions)
    sent: list[bytes] = []
    with trio.fail_after(DEADLINE):
        async with _serving(server) as port:
            client = await _connect(port)
            for index in range(12):
                if index % 3 == 0:
                    frame = _append("Q-WAIT", f"w{index}")  # (handle_lone: None)
                elif index % 3 == 1:
                    frame = _append("Q-LONE", f"h{index}", headers={"k": "v"})
                else:
                    frame = _append("Q-LONE", f"l{index}")  # (decided by the poller)
                sent.append(frame[4:])
                await client.stream.send_all(frame)
                answer = (await client.answers(1))[0]
                assert answer.endswith(f"{index}"), answer
                assert answer.startswith("lone:" if index % 3 == 2 else "many:"), answer
            # Several frames in one receive: the task decodes them (the poller did not),
            # frame by frame when one is not a plain APPEND (plain APPENDs alone are decoded
            # together: tests/test_leader12_receive.py).
            burst = [_append("Q-WAIT", f"b{index}") for index in range(3)]
            burst[1] = _append("Q-WAIT", "b1", headers={"k": "v"})
            sent.extend(frame[4:] for frame in burst)
            await client.stream.send_all(b"".join(burst))
            assert await client.answers(3) == ["many:b0", "many:b1", "many:b2"]
            await client.stream.aclose()
    assert decodes == sent  # (before: each request left to the task decoded twice)
    assert decisions.many == 11 and decisions.lone == 4
