"""``_propose_with_reads`` (``_runtime/_proposing.py``) asks ``ReadPath.qualifies`` once per run
of one READ object, and sends every command where asking for each one sends it: the same
reads to the ReadIndex path and the same commands to the log, in order, with their tokens."""

from __future__ import annotations

import random
import types

import pytest

from trio_broker._core import _commands as cmd
from trio_broker._core import _work_commands as work
from trio_broker._runtime._proposing import Proposing
from trio_broker._runtime._reads import ReadPath

QUEUES = ("Q-1", "Q-2")
CLIENTS = ("C-1", "C-2", "C-3")


def _path(rng: random.Random) -> ReadPath:
    path = ReadPath(None, None, None)  # type: ignore[arg-type]
    for client in CLIENTS:
        for queue in QUEUES:
            if rng.randrange(2):  # this pair's last read found nothing: its next READ qualifies
                path.exhausted.note(cmd.ReadNext(client, queue), cmd.MessageRead(None, None))
    if rng.randrange(2):
        path.exhausted.note(work.GroupRead("Q-1", "G", "C-1", 1, 1000), work.Delivered(()))
    return path


def _commands(rng: random.Random) -> list[object]:
    commands: list[object] = []
    for _ in range(rng.randint(1, 10)):
        queue, client = rng.choice(QUEUES), rng.choice(CLIENTS)
        kind = rng.randrange(5)
        if kind < 2:  # a run of one reader's READs: one object, repeated
            commands += [cmd.ReadNext(client, queue)] * rng.randint(1, 5)
        elif kind == 2:
            commands.append(cmd.AppendMessage(queue, b"1"))
        elif kind == 3:
            commands.append(cmd.ReadBatch(client, queue, 4, peek=bool(rng.randrange(2))))
        else:
            commands.append(work.GroupRead(queue, "G", client, 1, 1000))
    if rng.randrange(3) == 0 and commands:  # the same object again after others
        commands.append(commands[0])
    return commands


def _recording(path: ReadPath) -> tuple[types.SimpleNamespace, list[tuple], list[object]]:
    sent: list[tuple] = []
    asked: list[object] = []
    qualifies = path.qualifies

    def asking(command: object) -> bool:
        asked.append(command)
        return qualifies(command)

    reads = types.SimpleNamespace(qualifies=asking, submit=lambda c, t: sent.append(("read", c, t)))
    ledger = types.SimpleNamespace(add=lambda c, t: sent.append(("log", c, t)))
    return types.SimpleNamespace(reads=reads, _ledger=ledger), sent, asked


@pytest.mark.parametrize("seed", range(100))
def test_reads_go_where_asking_for_each_sends_them(seed):
    rng = random.Random(seed)
    path = _path(rng)
    commands = _commands(rng)
    group = object()
    each = [("read" if path.qualifies(c) else "log", c, (group, i)) for i, c in enumerate(commands)]
    driver, sent, asked = _recording(path)
    Proposing._propose_with_reads(driver, commands, group)  # type: ignore[arg-type]
    assert sent == each
    assert all(s[1] is c for s, c in zip(sent, commands, strict=True))
    # Asked once per run of one object (and never for a command that is not a read: an
    # append between two of a run's READs does not make it ask again).
    expected: list[object] = []
    for command in commands:
        if type(command) is not cmd.AppendMessage and (not expected or command is not expected[-1]):
            expected.append(command)
    assert asked == expected


def test_a_run_of_one_readers_reads_is_asked_about_once():
    rng = random.Random(0)
    path = _path(rng)
    path.exhausted.note(cmd.ReadNext("C-1", "Q-1"), cmd.MessageRead(None, None))
    read = cmd.ReadNext("C-1", "Q-1")
    driver, sent, asked = _recording(path)
    Proposing._propose_with_reads(driver, [read] * 16, "g")  # type: ignore[arg-type]
    assert asked == [read]
    assert sent == [("read", read, ("g", i)) for i in range(16)]
