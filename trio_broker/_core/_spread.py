"""Which broker should lead each replication group, when every broker hosts every group.

A cluster founded with several groups (docs/replication.md, "Several leaders") hosts each group
on every broker; what spreads the load is that each group is *led* by a different broker. The
rule is a pure function of replicated state (the sorted group ids and the group's voters, as its
own log last committed them), so every broker computes the same answer and nothing depends on a
local guess:

    preferred leader of group i (in id order) = its voters, sorted, at position i mod len(voters)

With G groups over N voters each broker is preferred for ``floor(G/N)`` or ``ceil(G/N)`` of them.
A group's leader hands leadership to the preferred broker (the existing TRANSFER_LEADERSHIP)
once that broker is caught up, at most once per ``interval`` per group (:class:`SpreadPacer`),
so a preferred broker that keeps failing to take over costs one attempt per interval, never a
loop, and leadership stays where it is while the preferred broker is down: a failover moves
leadership away, and healing moves it back. Converges: every transfer goes to a fixed target.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import attrs


def preferred_leader(group_ids: Sequence[str], group_id: str, voters: Iterable[str]) -> str | None:
    """The voter of ``group_id`` that should lead it; None when it has no voter or is not one
    of ``group_ids``."""
    ordered = sorted(set(voters))
    groups = sorted(set(group_ids))
    if not ordered or group_id not in groups:
        return None
    return ordered[groups.index(group_id) % len(ordered)]


def leader_share(group_count: int, broker_count: int) -> int:
    """The most groups one broker leads once leadership is spread: ``ceil(G/N)``."""
    if broker_count <= 0:
        return group_count
    return -(-group_count // broker_count)


@attrs.define
class SpreadPacer:
    """Bounds how often a group's leader tries to hand its leadership to the preferred broker.

    ``now`` is any monotonic clock (seconds in the runtime, ticks in the simulator)."""

    interval: float
    _last: dict[str, float] = attrs.field(factory=dict)

    def hand_over_to(
        self,
        *,
        group_id: str,
        self_id: str,
        preferred: str | None,
        caught_up: bool,
        now: float,
    ) -> str | None:
        """The broker to transfer ``group_id``'s leadership to now, or None to stay."""
        if preferred is None or preferred == self_id or not caught_up:
            return None
        last = self._last.get(group_id)
        if last is not None and now - last < self.interval:
            return None
        self._last[group_id] = now
        return preferred

    def forget(self, group_id: str) -> None:
        """The group is led elsewhere now: its next hand-over may be tried at once."""
        self._last.pop(group_id, None)


__all__ = ["SpreadPacer", "leader_share", "preferred_leader"]
