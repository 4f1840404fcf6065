"""A receive of plain APPENDs on a listener that needs ``AUTH`` (a lone broker: the leader
proposes its receive's columns at once, ``Proposing.propose_columns``'s lone path): APPENDs
before the AUTH refused, those after it held as columns and answered in place, only those
stored (docs/performance-history.md, "The leader's receive held as columns (thirteenth
round)")."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import trio

from trio_broker._core._append_columns import AppendColumns
from trio_broker._protocol import encode_frame
from trio_broker._runtime import BrokerConfig, open_broker
from trio_broker._runtime._poller import AVAILABLE as POLLER
from trio_broker._runtime._runs import Runs

from .wire import RawConnection


def _frame(obj: Any) -> bytes:
    return encode_frame(orjson.dumps(obj))


def _appends(queue: str, values: list[Any]) -> bytes:
    return b"".join(_frame({"operation": "APPEND", "queue_name": queue, "data": v}) for v in values)


@pytest.mark.skipif(not POLLER, reason="a receive's frames are read together through the poller")
async def test_appends_around_an_auth_in_one_receive_are_answered_in_place(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Would catch a receive's APPENDs taken as columns before its AUTH let them through
    (values stored from an unauthenticated connection), or an answer moved across the AUTH."""
    taken = [0]
    real = Runs._plain_commands

    def counted(self: Runs, requests: Any) -> Any:
        commands = real(self, requests)
        taken[0] += type(commands) is AppendColumns
        return commands

    monkeypatch.setattr(Runs, "_plain_commands", counted)
    tokens = tmp_path / "tokens"
    tokens.write_text("sesame\n")
    secret = tmp_path / "cluster.secret"
    secret.write_text("0123456789abcdef0123456789abcdef\n")
    config = BrokerConfig(
        data_dir=tmp_path / "b", port=0, client_tokens_file=tokens, cluster_secret_file=secret
    )
    async with open_broker(config) as broker:
        with trio.fail_after(20):
            admin = await RawConnection.open(broker.port)
            assert (await admin.call({"operation": "AUTH", "token": "sesame"}))["status"] == (
                "success"
            )
            created = await admin.call({"operation": "CREATE_QUEUE"})
            queue = created["queue_id"]
            await admin.aclose()
            conn = await RawConnection.open(broker.port)
            before = [f"before-{i}" for i in range(3)]
            after = [f"after-{i}-é\\" for i in range(6)]
            await conn.send_raw(
                _appends(queue, before)
                + _frame({"operation": "AUTH", "token": "sesame"})
                + _appends(queue, after)
            )
            answers = [await conn.receive() for _ in range(len(before) + 1 + len(after))]
            assert all(a is not None for a in answers)
            codes = [a.get("code", a["status"]) for a in answers]  # type: ignore[union-attr]
            assert codes == ["UNAUTHORIZED"] * 3 + ["success"] * 7
            assert [a["sequence_num"] for a in answers[4:]] == list(range(1, 7))  # type: ignore[index]
            await conn.send_raw(_appends(queue, ["again-1", "again-2"]))
            again = [await conn.receive(), await conn.receive()]
            assert [a["sequence_num"] for a in again] == [7, 8]  # type: ignore[index]
            await conn.aclose()
            stored = await broker.driver._worker.run(
                lambda: [orjson.loads(v) for v in broker.driver._store.messages(queue)]
            )
    assert stored == [*after, "again-1", "again-2"]
    assert taken[0] >= 1
