"""The consensus core rebuilt from what storage recovered (``Store.raft_state``) at a broker's
start and after a driver restart, including a log found damaged (docs/reliability.md,
"Damaged and shortened logs")."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import attrs

from .._core import _raft as raft
from .._core._raft_messages import Config, SnapshotMeta
from .._storage._files import DB_FILE
from .._storage._integrity import StorageDamaged
from ._applied import APPLY_LAG, applies_later
from ._config import BrokerConfig
from ._log import log_event


def make_node(
    broker_id: str, state: Any, config: BrokerConfig, rng: random.Random | None = None
) -> raft.RaftNode:
    """The core, from the recovery read (``Store.raft_state``). A log in which the store found
    damage (``state.damage``: the first damaged index and the last index it had) is given to
    the core cut before the damage, and the core recovers until that last index: it had
    acknowledged up to there, so it must not vote before a leader gave it all back."""
    snapshot_config = state.snapshot_config or Config(voters=frozenset())
    damage = getattr(state, "damage", None)
    entries = state.entries
    hard_state = state.hard_state
    loss = getattr(state, "hard_state_loss", None)
    if loss is not None:
        # Neither the term nor the vote read can be trusted: the term of the log's last
        # entry is a lower bound of the term it was in, and the core votes again only once
        # it learned a bound on the terms it voted in (docs/reliability.md, "A lost term or
        # vote").
        last_term = entries[-1].term if entries else state.snapshot_term
        hard_state = attrs.evolve(hard_state, term=last_term, voted_for=None, vote_lost=True)
        log_event(
            logging.WARNING,
            "raft.hard_state_lost",
            broker_id=broker_id,
            found=loss,
            term=last_term,
            action="no vote until the current terms of enough other voters are known",
        )
    if damage is not None:
        first_damaged, last_index = damage
        entries = [e for e in entries if e.index < first_damaged]
        log_event(
            logging.WARNING,
            "log.damaged",
            broker_id=broker_id,
            first_damaged=first_damaged,
            last_index=last_index,
        )
    node = raft.RaftNode(
        broker_id,
        hard_state=hard_state,
        snapshot=SnapshotMeta(state.snapshot_index, state.snapshot_term, snapshot_config),
        entries=entries,
        applied=state.applied,
        rng=rng or random.Random(int.from_bytes(os.urandom(8))),
        election_ticks=config.election_ticks,
        heartbeat_ticks=config.heartbeat_ticks,
        failure_timeout_ticks=config.election_ticks,
        acknowledged=damage[1] if damage is not None else None,
        apply_lag=APPLY_LAG,
        apply_later=applies_later,
    )
    if damage is not None and node.config.voters <= {broker_id}:
        # No other voter holds a copy to repair the log from: recovering would wait for ever.
        raise StorageDamaged(
            str(Path(config.data_dir) / DB_FILE),
            "raft_log",
            f"index {damage[0]}",
            "the entry does not match its checksum, and no other voter holds a copy of the log",
        )
    return node


__all__ = ["make_node"]
