"""What the parts of :class:`~._raft.RaftNode` see of each other, for the type checker:
:class:`RaftState`, the node's fields and the rules one part calls in another.

Each part (``_raft_elections``, ``_raft_restart``, ``_raft_replication``, ``_raft_snapshots``,
``_raft_membership``, ``_raft_leading``, ``_raft_ready``) derives from it only under
``TYPE_CHECKING``; at run time a part derives from ``object``, and nothing imports this
module. So mypy checks every field a part reads or writes against one declaration, and
every call into another part against that part's signature (declared here abstract, which
``RaftNode`` must implement, as it does through its parts). A plain class, not a
``Protocol``: a field declared in a protocol is taken as abstract, and a part's assignment
to it as a new definition of its own. The fields are set in ``RaftNode.__init__``, where
their meaning is documented."""

from __future__ import annotations

import random
from abc import abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._raft_log import RaftLog
    from ._raft_messages import (
        Config,
        DataSync,
        ElectionRequest,
        HardState,
        MemberView,
        Message,
        Replicate,
    )
    from ._raft_ready import Ready
    from ._raft_types import Progress, Role
    from ._read_index import ReadIndex

__all__ = ["RaftState"]


class RaftState:
    """The state of one broker's consensus core, and the rules its parts call in each other."""

    # settings
    id: Any
    rng: random.Random
    election_ticks: int
    heartbeat_ticks: int
    failure_timeout_ticks: int
    max_batch: int
    max_apply: int
    apply_lag: int
    apply_later: Callable[[Any], bool] | None
    _apply_due: bool
    _later_judged: tuple[int, int]
    _streaming: bool
    _resend_ticks: int
    pre_vote: bool
    check_quorum: bool

    # the log, the term and the vote
    log: RaftLog
    _snapshot_config: Config
    term: int
    voted_for: Any
    commit: int
    applied: int
    _persisted_hs: HardState
    config: Config

    # what a restart may have lost (_raft_restart)
    recovering_until: int | None
    recovering_term: int
    losses: list[int]
    restart_term: int
    unverified: bool
    vote_lost: bool
    _vote_lost_stored: bool
    _terms_heard: dict[Any, int]
    start_id: int
    vote_floor: tuple[int, int] | None
    _log_ends: dict[Any, tuple[int, int]]
    _told_log_end: int

    # roles and timers
    role: Role
    leader_id: Any
    now: int
    election_elapsed: int
    heartbeat_elapsed: int
    randomized_timeout: int
    votes: dict[Any, bool]
    progress: dict[Any, Progress]
    _term_start_index: int
    transfer_target: Any
    _transfer_elapsed: int
    _statuses: dict[Any, str]
    _announced: tuple[MemberView, ...]
    _view_held: set[Any]
    _view_sent: dict[Any, int]
    _view_other: dict[Any, int]
    _view_relinked: set[Any]

    # the effects gathered for the next Ready
    _msgs: list[Message]
    _persisted_msgs: list[Message]
    _snapshot_to_install: DataSync | None
    _snapshot_wanted: bool
    _snapshots_to_send: list[Any]
    _inflight: Ready | None
    _append_pending: bool
    reads: ReadIndex

    # kept in _raft.py
    @property
    @abstractmethod
    def is_leader(self) -> bool: ...
    @property
    @abstractmethod
    def hard_state(self) -> HardState: ...
    @property
    @abstractmethod
    def cluster_version(self) -> int: ...
    @abstractmethod
    def _send(self, m: Message) -> None: ...
    @abstractmethod
    def _reply_to(self, cls: type, dst: Any) -> Message: ...

    # in _raft_elections.py
    @abstractmethod
    def _vouches_for_itself(self, pre_vote: bool) -> bool: ...
    @abstractmethod
    def _tally(self) -> str: ...
    @abstractmethod
    def _after_win(self) -> None: ...
    @abstractmethod
    def _become_follower(self, term: int, leader: Any) -> None: ...

    # in _raft_restart.py
    @abstractmethod
    def _log_trusted(self) -> bool: ...
    @abstractmethod
    def _check_recovered(self) -> None: ...
    @abstractmethod
    def _vouches_for(self, last_term: int, last_index: int, pre_vote: bool) -> bool: ...
    @abstractmethod
    def _beyond_what_was_lost(self, m: ElectionRequest) -> bool: ...
    @abstractmethod
    def _log_end_told(self) -> dict[str, Any]: ...
    @abstractmethod
    def _verified(self, floor: tuple[int, int]) -> None: ...
    @abstractmethod
    def _check_verified(self) -> None: ...

    # in _raft_replication.py
    @abstractmethod
    def _broadcast_heartbeat(self) -> None: ...
    @abstractmethod
    def _broadcast_append(self, promote: bool = False, empty_ok: bool = False) -> None: ...
    @abstractmethod
    def _send_append(self, peer: Any, promote: bool = False, probe_empty: bool = False) -> None: ...
    @abstractmethod
    def _maybe_commit(self) -> bool: ...
    @abstractmethod
    def _ack(self, m: Replicate | DataSync, match: int) -> None: ...

    # in _raft_membership.py
    @abstractmethod
    def _status_of(self, member: Any) -> str: ...
    @abstractmethod
    def _maybe_announce(self) -> None: ...
    @abstractmethod
    def _view_acknowledged(self, member: Any) -> None: ...
    @abstractmethod
    def _view_reheard(self, member: Any) -> None: ...
    @abstractmethod
    def _view_reconnected(self, member: Any) -> None: ...
    @abstractmethod
    def _config_index(self) -> int: ...
    @abstractmethod
    def _config_at(self, index: int) -> Config: ...
    @abstractmethod
    def _set_config(self, config: Config) -> None: ...
    @abstractmethod
    def _prune_removed(self) -> None: ...
    @abstractmethod
    def _after_commit(self) -> None: ...

    # in _raft_leading.py
    @abstractmethod
    def _maybe_send_timeout_now(self, target: Any) -> None: ...
    @abstractmethod
    def _confirm_reads(self) -> None: ...
    @abstractmethod
    def _send_read_round(self) -> None: ...
