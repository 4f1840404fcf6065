"""The chaos suite's checker on hand-made histories: each anomaly is caught, and each legitimate
consequence of an unknown outcome is accepted.

Times are explicit: ``at=`` numbers stand for the recorder's clock.
"""

from __future__ import annotations

import orjson
import pytest
import trio

from trio_broker.testing._history import History, OpType
from trio_broker.testing._proxy import ANY, CLIENT, DROP, PASS, Fault, FaultProxy

from .wire import RawConnection

Q = "Q-AAAAABBBBB"
R = "Q-AAAAACCCCC"


class Script:
    """A history written by hand: each operation gets an invoke and a completion time."""

    def __init__(self) -> None:
        self.history = History(clock=lambda: pytest.fail("explicit times only"))

    def append(self, process, value, outcome="ok", seq=None, t=(0, 1), queue=Q):
        op = self.history.invoke(process, "append", queue, value, at=t[0])
        return self._complete(op, outcome, t[1], seq=seq)

    def read(self, process, seq=None, data=None, outcome="ok", t=(0, 1), queue=Q):
        op = self.history.invoke(process, "read", queue, at=t[0])
        if outcome == "ok" and seq is not None:
            return self.history.ok(op, seq, data, at=t[1])
        return self._complete(op, outcome, t[1])

    def _complete(self, op, outcome, at, **fields):
        if outcome == "ok":
            return self.history.ok(op, at=at, **fields)
        if outcome == "fail":
            return self.history.fail(op, "NOT_LEADER: not the leader", at=at)
        if outcome == "info":
            return self.history.info(op, "timeout", at=at)
        assert outcome == "invoke"  # never completed
        return op

    def final(self, *values, queue=Q):
        self.history.set_final(queue, [(i + 1, v) for i, v in enumerate(values)])

    def check(self):
        return self.history.check()

    def kinds(self):
        return self.check().kinds


def valid(script: Script) -> None:
    result = script.check()
    assert result.valid, result.report(script.history)


# -- legitimate histories -------------------------------------------------------------------------


def test_empty_history_is_valid():
    s = Script()
    s.final()
    valid(s)


def test_acknowledged_appends_and_reads_in_order():
    s = Script()
    s.append("C-1", "a", seq=1, t=(0, 1))
    s.append("C-2", "b", seq=2, t=(2, 3))
    s.read("C-3", 1, "a", t=(4, 5))
    s.read("C-3", 2, "b", t=(6, 7))
    s.read("C-3", t=(8, 9))  # no messages
    s.final("a", "b")
    valid(s)


def test_values_of_every_json_type_compare_exactly():
    s = Script()
    values = [1, 1.5, True, None, "1", [1, {"k": None}], {"b": 1, "a": 2}]
    for i, value in enumerate(values):
        s.append("C-1", value, seq=i + 1, t=(2 * i, 2 * i + 1))
    s.read("C-2", 7, {"a": 2, "b": 1}, t=(100, 101))
    s.read("C-3", 2, 1.5, t=(100, 101))
    s.final(*values)
    # C-2 and C-3 skipped messages without reads of unknown outcome: exactly that is reported.
    assert s.kinds() == {"read-gap"}


def test_indeterminate_append_may_be_absent():
    s = Script()
    s.append("C-1", "a", seq=1)
    s.append("C-1", "lost?", outcome="info", t=(2, 3))
    s.final("a")
    valid(s)


def test_indeterminate_append_may_be_present_once():
    s = Script()
    s.append("C-1", "maybe", outcome="info", t=(0, 1))
    s.append("C-1", "a", seq=2, t=(2, 3))
    s.final("maybe", "a")
    valid(s)


def test_indeterminate_append_may_be_committed_after_it_timed_out():
    # The client gave up at t=1; the entry was committed later, after "a" (sent at t=2).
    s = Script()
    s.append("C-1", "late", outcome="info", t=(0, 1))
    s.append("C-2", "a", seq=1, t=(2, 3))
    s.final("a", "late")
    valid(s)


def test_operation_that_never_completed_counts_as_indeterminate():
    s = Script()
    s.append("C-1", "pending", outcome="invoke", t=(0, None))
    s.read("C-2", outcome="invoke", t=(0, None))
    s.read("C-2", 2, "b", t=(5, 6))
    s.append("C-3", "b", seq=2, t=(1, 2))
    s.final("pending", "b")
    valid(s)


def test_concurrent_appends_may_be_ordered_either_way():
    s = Script()
    s.append("C-1", "a", seq=2, t=(0, 5))
    s.append("C-2", "b", seq=1, t=(1, 4))
    s.final("b", "a")
    valid(s)


def test_indeterminate_read_explains_one_skipped_message():
    s = Script()
    for i, v in enumerate("abc"):
        s.append("C-W", v, seq=i + 1, t=(i, i + 0.5))
    s.read("C-R", 1, "a", t=(10, 11))
    s.read("C-R", outcome="info", t=(12, 13))  # consumed "b", the answer was lost
    s.read("C-R", 3, "c", t=(14, 15))
    s.final("a", "b", "c")
    valid(s)


def test_indeterminate_read_may_be_applied_later():
    # The lost read was applied long after the client gave up (a delayed request): it explains
    # a skip that happens after later successful reads.
    s = Script()
    for i, v in enumerate("abcd"):
        s.append("C-W", v, seq=i + 1, t=(i, i + 0.5))
    s.read("C-R", outcome="info", t=(10, 11))
    s.read("C-R", 1, "a", t=(12, 13))
    s.read("C-R", 2, "b", t=(14, 15))
    s.read("C-R", 4, "d", t=(16, 17))
    s.final("a", "b", "c", "d")
    valid(s)


def test_first_read_may_skip_what_indeterminate_reads_consumed():
    s = Script()
    s.append("C-W", "a", seq=1)
    s.append("C-W", "b", seq=2, t=(2, 3))
    s.read("C-R", outcome="info", t=(4, 5))
    s.read("C-R", 2, "b", t=(6, 7))
    s.final("a", "b")
    valid(s)


def test_empty_read_after_indeterminate_reads_is_fine():
    s = Script()
    s.append("C-W", "a", seq=1)
    s.read("C-R", outcome="info", t=(2, 3))
    s.read("C-R", t=(4, 5))  # the lost read took "a"
    s.final("a")
    valid(s)


def test_empty_read_concurrent_with_an_append_is_fine():
    s = Script()
    s.append("C-W", "a", seq=1, t=(0, 10))
    s.read("C-R", t=(5, 6))
    s.final("a")
    valid(s)


def test_reads_of_different_queues_and_clients_are_independent():
    s = Script()
    s.append("C-W", "a", seq=1)
    s.append("C-W", "x", seq=1, queue=R, t=(2, 3))
    s.read("C-1", 1, "a", t=(4, 5))
    s.read("C-1", 1, "x", queue=R, t=(6, 7))
    s.read("C-2", 1, "a", t=(4, 5))
    s.final("a")
    s.final("x", queue=R)
    valid(s)


def test_failed_reads_and_appends_that_never_appear_are_fine():
    s = Script()
    s.append("C-W", "refused", outcome="fail")
    s.append("C-W", "a", seq=1, t=(2, 3))
    s.read("C-R", outcome="fail", t=(4, 5))
    s.read("C-R", 1, "a", t=(6, 7))
    s.final("a")
    valid(s)


# -- anomalies ------------------------------------------------------------------------------------


def test_lost_acknowledged_append():
    s = Script()
    s.append("C-1", "a", seq=1)
    s.append("C-1", "b", seq=2, t=(2, 3))
    s.final("a")
    assert s.kinds() == {"lost"}


def test_acknowledged_append_stored_elsewhere():
    s = Script()
    s.append("C-1", "a", seq=1, t=(0, 1))
    s.append("C-2", "b", seq=1, t=(0, 1))  # two acknowledgements of one sequence number
    s.final("a", "b")
    result = s.check()
    assert result.kinds == {"lost"}
    assert "b" in str(result.anomalies[0])


def test_phantom_in_the_final_queue():
    s = Script()
    s.append("C-1", "a", seq=1)
    s.final("a", "never-sent")
    assert s.kinds() == {"phantom"}


def test_phantom_read():
    s = Script()
    s.read("C-R", 1, "ghost")
    s.final()
    assert "phantom" in s.kinds()


def test_value_from_another_queue_is_a_phantom():
    s = Script()
    s.append("C-1", "a", seq=1, queue=R)
    s.final("a")
    s.final("a", queue=R)
    assert s.kinds() == {"phantom"}


def test_duplicate_of_an_indeterminate_append():
    s = Script()
    s.append("C-1", "twice?", outcome="info")
    s.final("twice?", "twice?")
    assert s.kinds() == {"duplicate"}


def test_duplicate_of_an_acknowledged_append():
    s = Script()
    s.append("C-1", "a", seq=1)
    s.final("a", "a")
    assert s.kinds() == {"duplicate"}


def test_failed_append_in_the_final_queue():
    s = Script()
    s.append("C-1", "refused", outcome="fail")
    s.final("refused")
    assert s.kinds() == {"failed-present"}


def test_failed_append_read_by_a_client():
    s = Script()
    s.append("C-1", "refused", outcome="fail", t=(0, 1))
    s.read("C-R", 1, "refused", t=(2, 3))
    s.final("refused")
    assert s.kinds() == {"failed-present"}


def test_repeated_delivery():
    s = Script()
    s.append("C-W", "a", seq=1)
    s.read("C-R", 1, "a", t=(2, 3))
    s.read("C-R", 1, "a", t=(4, 5))
    s.final("a")
    result = s.check()
    assert result.kinds == {"read-order"}
    assert "repeat" in str(result.anomalies[0])


def test_reads_going_back():
    s = Script()
    s.append("C-W", "a", seq=1)
    s.append("C-W", "b", seq=2, t=(1, 2))
    s.read("C-R", outcome="info", t=(3, 4))
    s.read("C-R", 2, "b", t=(5, 6))
    s.read("C-R", 1, "a", t=(7, 8))
    s.final("a", "b")
    assert s.kinds() == {"read-order"}


def test_skip_without_indeterminate_read():
    s = Script()
    s.append("C-W", "a", seq=1)
    s.append("C-W", "b", seq=2, t=(1, 2))
    s.read("C-R", 2, "b", t=(3, 4))
    s.final("a", "b")
    assert s.kinds() == {"read-gap"}


def test_failed_read_does_not_explain_a_skip():
    s = Script()
    s.append("C-W", "a", seq=1)
    s.append("C-W", "b", seq=2, t=(1, 2))
    s.read("C-R", outcome="fail", t=(3, 4))
    s.read("C-R", 2, "b", t=(5, 6))
    s.final("a", "b")
    assert s.kinds() == {"read-gap"}


def test_one_indeterminate_read_explains_only_one_skip():
    s = Script()
    for i, v in enumerate("abc"):
        s.append("C-W", v, seq=i + 1, t=(i, i + 0.5))
    s.read("C-R", outcome="info", t=(10, 11))
    s.read("C-R", 3, "c", t=(12, 13))
    s.final("a", "b", "c")
    assert s.kinds() == {"read-gap"}


def test_indeterminate_read_is_used_once():
    s = Script()
    for i, v in enumerate("abcde"):
        s.append("C-W", v, seq=i + 1, t=(i, i + 0.5))
    s.read("C-R", outcome="info", t=(10, 11))
    s.read("C-R", 2, "b", t=(12, 13))  # the lost read took "a"
    s.read("C-R", 4, "d", t=(14, 15))  # nothing left to explain "c"
    s.final(*"abcde")
    assert s.kinds() == {"read-gap"}


def test_indeterminate_read_after_the_skip_does_not_explain_it():
    s = Script()
    s.append("C-W", "a", seq=1)
    s.append("C-W", "b", seq=2, t=(1, 2))
    s.read("C-R", 2, "b", t=(3, 4))
    s.read("C-R", outcome="info", t=(5, 6))
    s.final("a", "b")
    assert s.kinds() == {"read-gap"}


def test_indeterminate_read_of_another_queue_does_not_explain_a_skip():
    s = Script()
    s.append("C-W", "a", seq=1)
    s.append("C-W", "b", seq=2, t=(1, 2))
    s.read("C-R", outcome="info", queue=R, t=(3, 4))
    s.read("C-R", 2, "b", t=(5, 6))
    s.final("a", "b")
    s.final(queue=R)
    assert s.kinds() == {"read-gap"}


def test_stale_empty_read():
    s = Script()
    s.append("C-W", "a", seq=1, t=(0, 1))
    s.read("C-R", t=(2, 3))  # "no messages", although "a" was acknowledged before
    s.final("a")
    assert s.kinds() == {"stale-empty-read"}


def test_stale_empty_read_beyond_what_indeterminate_reads_explain():
    s = Script()
    s.append("C-W", "a", seq=1, t=(0, 1))
    s.append("C-W", "b", seq=2, t=(0, 1))
    s.read("C-R", outcome="info", t=(2, 3))
    s.read("C-R", t=(4, 5))
    s.final("a", "b")
    assert s.kinds() == {"stale-empty-read"}


def test_read_before_its_append_was_sent():
    s = Script()
    s.read("C-R", 1, "a", t=(0, 1))
    s.append("C-W", "a", seq=1, t=(2, 3))
    s.final("a")
    assert s.kinds() == {"read-before-append"}


def test_read_disagrees_with_the_final_queue():
    s = Script()
    s.append("C-W", "a", outcome="info", t=(0, 1))
    s.append("C-W", "b", outcome="info", t=(0, 1))
    s.read("C-R", outcome="info", t=(2, 3))
    s.read("C-R", 2, "a", t=(4, 5))  # the final read has "a" at 1
    s.final("a", "b")
    assert s.kinds() == {"read-mismatch"}


def test_read_disagrees_with_the_acknowledgement():
    s = Script()
    s.append("C-W", "a", seq=2, t=(0, 1))
    s.append("C-W", "b", outcome="info", t=(0, 1))
    s.read("C-R", 1, "a", t=(4, 5))
    s.final("b", "a")
    result = s.check()
    assert result.kinds == {"read-mismatch"}
    messages = " | ".join(map(str, result.anomalies))
    assert "acknowledged at 2" in messages and "final queue has 'b'" in messages


def test_acknowledged_appends_out_of_real_time_order():
    s = Script()
    s.append("C-1", "first", seq=2, t=(0, 1))
    s.append("C-2", "second", seq=1, t=(2, 3))
    s.final("second", "first")
    assert s.kinds() == {"append-order"}


def test_indeterminate_append_stored_before_one_acknowledged_before_it_was_sent():
    s = Script()
    s.append("C-1", "first", seq=2, t=(0, 1))
    s.append("C-2", "second", outcome="info", t=(2, 3))
    s.final("second", "first")
    assert s.kinds() == {"append-order"}


def test_final_read_with_a_hole():
    s = Script()
    s.append("C-1", "a", outcome="info")
    s.append("C-1", "b", outcome="info")
    s.history.set_final(Q, [(1, "a"), (3, "b")])
    assert s.kinds() == {"final-incomplete"}


def test_final_read_not_starting_at_one():
    s = Script()
    s.append("C-1", "a", outcome="info")
    s.history.set_final(Q, [(2, "a")])
    assert s.kinds() == {"final-incomplete"}


def test_every_anomaly_is_reported_with_its_operations():
    s = Script()
    s.append("C-1", "a", seq=1)
    s.append("C-1", "b", seq=2, t=(2, 3))
    s.read("C-R", 2, "b", t=(4, 5))
    s.final("a")
    result = s.check()
    assert result.kinds == {"lost", "read-gap", "read-mismatch"}
    report = result.report(s.history)
    assert "C-R" in report and '"value":"b"' in report
    assert result.counts == {"append:ok": 2, "read:ok": 1}


# -- the recorder ---------------------------------------------------------------------------------


def test_values_must_be_unique():
    s = Script()
    s.append("C-1", "same", seq=1)
    s.append("C-2", "same", seq=2, t=(2, 3))
    with pytest.raises(ValueError, match="unique"):
        s.check()


def test_an_operation_completes_once():
    s = Script()
    op = s.append("C-1", "a", seq=1)
    with pytest.raises(ValueError, match="already completed"):
        s.history.info(op, "late", at=2)


def test_acknowledgements_carry_what_they_must():
    history = History(clock=lambda: 0.0)
    with pytest.raises(ValueError):
        history.ok(history.invoke("C-1", "append", Q, "a"))
    with pytest.raises(ValueError):
        history.ok(history.invoke("C-1", "read", Q), 1)
    with pytest.raises(ValueError):
        history.invoke("C-1", "delete", Q)


def test_recorder_uses_its_clock_and_dumps_json_lines(tmp_path):
    now = iter([1.0, 2.0, 3.0, 4.0])
    history = History(clock=lambda: next(now))
    history.ok(history.invoke("C-1", "append", Q, {"x": 1}), 1)
    op = history.info(history.invoke("C-1", "read", Q), "timeout")
    assert (op.invoke_time, op.complete_time, op.type) == (3.0, 4.0, OpType.INFO)
    history.set_final(Q, [(1, {"x": 1})])
    lines = history.dump(tmp_path / "h.jsonl").read_bytes().splitlines()
    records = [orjson.loads(line) for line in lines]
    assert records[0]["value"] == {"x": 1} and records[0]["seq"] == 1
    assert records[1]["type"] == "info" and records[1]["error"] == "timeout"
    assert records[2] == {"final": Q, "messages": [[1, {"x": 1}]]}
    assert history.check().valid


# -- the fault proxy the chaos suite partitions brokers with -----------------------------------
# (Fast, over loopback; here rather than in tests/chaos so that the default suite runs them.)


async def _echo_server(nursery):
    async def echo(stream):
        async with stream:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)

    listeners = await nursery.start(trio.serve_tcp, echo, 0)
    return listeners[0].socket.getsockname()[1]


async def _exchange(port, payload, within=1.0):
    with trio.move_on_after(within):
        conn = await RawConnection.open(port)
        try:
            await conn.send(payload)
            return await conn.receive()
        finally:
            await trio.aclose_forcefully(conn.stream)
    return None


async def test_proxy_forwards_and_tells_brokers_from_clients():
    async with trio.open_nursery() as nursery:
        proxy = FaultProxy(await _echo_server(nursery))
        await nursery.start(proxy.serve)
        hello = {"operation": "PEER_HELLO", "broker_id": "B-AAAAA", "to": "B-BBBBB"}
        assert await _exchange(proxy.port, hello) == hello
        assert await _exchange(proxy.port, {"operation": "READ"}) == {"operation": "READ"}
        assert proxy.statistics().sources == {"B-AAAAA": 1, CLIENT: 1}
        nursery.cancel_scope.cancel()


async def test_proxy_drops_per_source_and_direction_and_closes_poisoned_links_on_heal():
    async with trio.open_nursery() as nursery:
        proxy = FaultProxy(await _echo_server(nursery))
        await nursery.start(proxy.serve)
        hello = {"operation": "PEER_HELLO", "broker_id": "B-AAAAA"}
        conn = await RawConnection.open(proxy.port)
        await conn.send(hello)
        assert await conn.receive() == hello
        proxy.set_fault("B-AAAAA", up=PASS, down=DROP)
        # Clients are not affected by a rule for one broker.
        assert await _exchange(proxy.port, {"n": 1}) == {"n": 1}
        await conn.send({"n": 2})
        with trio.move_on_after(0.3) as scope:
            await conn.receive()
        assert scope.cancelled_caught  # the echo was dropped
        proxy.heal()
        with trio.fail_after(2):
            assert await conn.receive() is None  # poisoned: closed, not resumed with a hole
        assert proxy.statistics().poisoned_closed == 1
        # A source partitioned at connect time is never forwarded.
        proxy.set_fault(ANY, up=DROP, down=DROP)
        assert await _exchange(proxy.port, {"n": 3}, within=0.3) is None
        proxy.heal()
        assert await _exchange(proxy.port, {"n": 4}) == {"n": 4}
        nursery.cancel_scope.cancel()


async def test_proxy_delays_and_pauses():
    async with trio.open_nursery() as nursery:
        proxy = FaultProxy(await _echo_server(nursery))
        await nursery.start(proxy.serve)
        proxy.set_fault(CLIENT, up=Fault(delay=0.2))
        start = trio.current_time()
        assert await _exchange(proxy.port, {"n": 1}) == {"n": 1}
        assert trio.current_time() - start >= 0.2
        proxy.heal()
        proxy.pause()
        await trio.sleep(0.05)
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", proxy.port)
        await proxy.resume()
        assert await _exchange(proxy.port, {"n": 2}) == {"n": 2}
        nursery.cancel_scope.cancel()
