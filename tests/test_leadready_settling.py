"""``settling()`` as a class (``_pending.py``) holds and calls back exactly as the generator-based
context manager before it did (frozen here, ``_settling_before``): over seeded programs of
blocks nested in blocks, outcomes set inside and outside them (single proposals and groups),
callbacks registered twice, bodies that raise, and tasks started inside a block that set an
outcome after it ended, the same callbacks are called in the same order at the same points;
and two threads' blocks hold their own callbacks."""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio
import trio.testing

from trio_broker._runtime import _pending
from trio_broker._runtime._pending import Pending, PendingGroup, settling


@contextlib.contextmanager
def _settling_before() -> Iterator[None]:
    """``settling`` as it was before it was a class (5e8e1d9)."""
    outer = _pending._held.get()
    if outer is not None and outer.open:
        yield
        return
    held = _pending._Held()
    token = _pending._held.set(held)
    try:
        yield
    finally:
        held.open = False
        _pending._held.reset(token)
        for callback in dict.fromkeys(held):
            callback()


class _Boom(Exception):
    pass


def _program(rng: random.Random, depth: int = 0) -> list[Any]:
    """Steps: ("set", n) sets outcome n; ("group", n, i) one of group n's; ("block", steps);
    ("raise",) raises out of the innermost block (caught by the block around it)."""
    steps: list[Any] = []
    for _ in range(rng.randrange(1, 6)):
        kind = rng.random()
        if kind < 0.35:
            steps.append(("set", rng.randrange(6)))
        elif kind < 0.6:
            steps.append(("group", rng.randrange(3), rng.randrange(3)))
        elif kind < 0.9 and depth < 3:
            steps.append(("block", _program(rng, depth + 1)))
        elif depth:
            steps.append(("raise",))
    return steps


def _run(steps: list[Any], block: Callable[[], Any], seed: int) -> list[Any]:
    """The callbacks' calls (with when each came: after which step) of ``steps`` run with
    ``block`` as ``settling``."""
    calls: list[Any] = []
    at = [0]
    pendings = [Pending() for _ in range(6)]
    groups = [PendingGroup(3) for _ in range(3)]
    rng = random.Random(seed)
    shared = [lambda n=n: calls.append(("shared", n, at[0])) for n in range(2)]
    for n, pending in enumerate(pendings):
        callback = rng.choice([*shared, lambda n=n: calls.append(("pending", n, at[0]))])
        pending.when_done(callback)
    for n, group in enumerate(groups):
        group.when_done(lambda n=n: calls.append(("group", n, at[0])))

    def run(steps: list[Any]) -> None:
        for step in steps:
            at[0] += 1
            if step[0] == "set":
                pendings[step[1]].set(at[0])
            elif step[0] == "group":
                groups[step[1]].set(step[2], at[0])
            elif step[0] == "raise":
                raise _Boom
            else:
                try:
                    with block():
                        run(step[1])
                except _Boom:
                    calls.append(("caught", at[0]))

    with block():
        run(steps)
    at[0] += 1
    for pending in pendings:  # (outcomes set after every block: called back at once)
        pending.set(None)
    return calls


@pytest.mark.parametrize("seed", range(200))
def test_callbacks_as_the_generator_before_called_them(seed):
    steps = _program(random.Random(seed))
    assert _run(steps, settling, seed) == _run(steps, _settling_before, seed)


BLOCKS = [pytest.param(settling, id="class"), pytest.param(_settling_before, id="before")]


@pytest.mark.parametrize("block", BLOCKS)
def test_a_body_that_raises_calls_back_then_raises(block):
    calls: list[int] = []
    pending = Pending()
    pending.when_done(lambda: calls.append(1))
    with pytest.raises(_Boom), block():
        pending.set(1)
        assert calls == []  # (held until the block ends)
        raise _Boom
    assert calls == [1]
    assert _pending._held.get() is None


@pytest.mark.parametrize("block", BLOCKS)
async def test_a_task_started_inside_calls_back_at_once_after_the_block(block):
    calls: list[str] = []
    pending = Pending()
    pending.when_done(lambda: calls.append("late"))
    go = trio.Event()

    own = Pending()
    own.when_done(lambda: calls.append("own"))

    async def late() -> None:
        await go.wait()
        pending.set(1)
        with block():  # (its own block: the one it inherited has ended)
            own.set(1)
            calls.append("inside")

    async with trio.open_nursery() as nursery:
        with block():
            nursery.start_soon(late)
        go.set()
        await trio.testing.wait_all_tasks_blocked()
        assert calls == ["late", "inside", "own"]


def test_threads_hold_their_own_callbacks():
    inside = threading.Barrier(2)
    calls: dict[str, list[int]] = {"a": [], "b": []}

    def one(name: str) -> None:
        pending = Pending()
        pending.when_done(lambda: calls[name].append(1))
        with settling():
            inside.wait()
            pending.set(1)
            inside.wait()
            assert calls[name] == []
        assert calls[name] == [1]

    threads = [threading.Thread(target=one, args=(name,)) for name in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert calls == {"a": [1], "b": [1]}
