"""A group entry decoded from a peer (or read back from the log) holds at most ``MAX_GROUP``
commands, the most a leader's proposals ledger puts in one entry (``_core/_proposals.py``):
in its COMMAND_GROUP form and in its APPEND_RUNS form (runs, and values across runs), a
group past the bound is the peer's error, refused before any of its commands is decoded or
its entry is made; a group at the bound, as a leader writes it, is taken."""

from __future__ import annotations

import pytest

from trio_broker._core import _commands as cmd
from trio_broker._core import _raft_messages as rm
from trio_broker._core._proposals import MAX_GROUP, Proposals
from trio_broker._errors import RemoteProtocolError
from trio_broker._protocol._consensus import encode_message, message_from_payload
from trio_broker._protocol._entries import decode_payload, encode_payload, payload_bytes


def _appends(count: int, queues: int = 1) -> cmd.CommandGroup:
    """``count`` plain appends (what a leader groups under load, in runs when every member
    reads them): a run per queue, ``queues`` of them in turn."""
    return cmd.CommandGroup(
        tuple(cmd.AppendMessage(f"Q-{i % queues}", b'"v"', None, None, 1_700) for i in range(count))
    )


def _reads(count: int) -> cmd.CommandGroup:
    return cmd.CommandGroup(tuple(cmd.ReadNext(f"C-{i}", "Q-0") for i in range(count)))


def _replicate(group: cmd.CommandGroup, runs: bool) -> bytes:
    entry = rm.Entry(2, 7, group)
    payload_bytes(entry, runs)
    message = rm.Replicate(
        src="B-00001",
        dst="B-00002",
        term=2,
        cluster_version=1,
        prev_log_index=6,
        prev_log_term=2,
        entries=(entry,),
        leader_commit=0,
    )
    return encode_message(message, append_runs=runs)


@pytest.mark.parametrize(
    ("make", "runs", "form"),
    [
        (_appends, False, "COMMAND_GROUP"),
        (_reads, False, "COMMAND_GROUP"),
        (_appends, True, "APPEND_RUNS"),
        (lambda count: _appends(count, queues=count), True, "APPEND_RUNS"),  # a run each
    ],
)
def test_a_group_past_the_bound_is_refused_and_one_at_it_taken(make, runs, form):
    at, past = make(MAX_GROUP), make(MAX_GROUP + 1)
    assert encode_payload(at, runs).startswith(b'{"type":"%s"' % form.encode())
    assert decode_payload(encode_payload(at, runs)) == at
    with pytest.raises(RemoteProtocolError, match=f"malformed {form} .* at most {MAX_GROUP}"):
        decode_payload(encode_payload(past, runs))
    # The same in a REPLICATE: the frame is refused (the link's peer.bad_message), so no
    # entry of it is made, stored or acknowledged.
    _, message = message_from_payload(_replicate(at, runs))
    assert message.entries[0].payload == at
    with pytest.raises(RemoteProtocolError, match=f"at most {MAX_GROUP}"):
        message_from_payload(_replicate(past, runs))


def test_runs_whose_values_together_pass_the_bound_are_refused():
    """Two runs, each under the bound, together over it: counted across runs, and refused
    before the run that passes it is written."""
    half = MAX_GROUP // 2 + 1
    group = cmd.CommandGroup(
        tuple(cmd.AppendMessage("Q-0", b"1", None, None, 1) for _ in range(half))
        + tuple(cmd.AppendMessage("Q-1", b"1", None, None, 1) for _ in range(half))
    )
    payload = encode_payload(group, True)
    assert payload.count(b'["Q-') == 2
    with pytest.raises(RemoteProtocolError, match="its runs hold more"):
        decode_payload(payload)


def test_the_bound_is_the_leaders_cut():
    """The bound refuses nothing a leader writes and nothing more: its ledger cuts at
    ``MAX_GROUP`` commands however many requests wait, each group it cuts decodes in both
    forms, and one command more does not."""
    ledger: Proposals[int] = Proposals(max_bytes=1024 * 1024)
    count = 2 * MAX_GROUP + 5
    ledger.add_many(list(_appends(count).commands), list(range(count)))
    groups: list[cmd.CommandGroup] = []

    def propose(payload: cmd.CommandGroup) -> tuple[int, int]:
        groups.append(payload)
        return 1, len(groups)

    ledger.propose_queued(propose)
    assert [len(g.commands) for g in groups] == [MAX_GROUP, MAX_GROUP, 5]
    for group in groups:
        for runs in (False, True):
            assert decode_payload(encode_payload(group, runs)) == group
    more = cmd.CommandGroup((*groups[0].commands, groups[2].commands[0]))
    for runs in (False, True):
        with pytest.raises(RemoteProtocolError, match=f"at most {MAX_GROUP}"):
            decode_payload(encode_payload(more, runs))
