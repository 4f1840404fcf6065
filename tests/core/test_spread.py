"""The leadership spread rule for clusters whose brokers host every group (_core/_spread.py)."""

from __future__ import annotations

import collections
import itertools

import pytest

from trio_broker._core._spread import SpreadPacer, leader_share, preferred_leader

BROKERS = [f"B-AAAA{i}" for i in range(7)]
GROUPS = [f"G-GGGG{c}" for c in "0123456789ABCDEFGHIJ"]


@pytest.mark.parametrize(("n", "g"), list(itertools.product(range(1, 8), range(1, 21))))
def test_every_broker_is_preferred_for_its_share(n: int, g: int) -> None:
    brokers, groups = BROKERS[:n], GROUPS[:g]
    led = collections.Counter(preferred_leader(groups, gid, brokers) for gid in groups)
    assert sum(led.values()) == g
    assert max(led.values()) == leader_share(g, n)
    if g >= n:
        assert min(led[b] for b in brokers) == g // n
    assert set(led) <= set(brokers)


def test_the_rule_ignores_the_order_it_is_given() -> None:
    groups, voters = GROUPS[:5], BROKERS[:3]
    for gid in groups:
        assert preferred_leader(list(reversed(groups)), gid, list(reversed(voters))) == (
            preferred_leader(groups, gid, voters)
        )


def test_no_preference_without_voters_or_for_an_unknown_group() -> None:
    assert preferred_leader(GROUPS[:3], GROUPS[0], []) is None
    assert preferred_leader(GROUPS[:3], GROUPS[5], BROKERS[:3]) is None


def test_pacer_tries_once_per_interval_and_only_when_caught_up() -> None:
    pacer = SpreadPacer(interval=10)
    ask = dict(group_id="G-A", self_id="B-1", preferred="B-2")
    assert pacer.hand_over_to(**ask, caught_up=False, now=0) is None
    assert pacer.hand_over_to(**ask, caught_up=True, now=1) == "B-2"
    assert pacer.hand_over_to(**ask, caught_up=True, now=5) is None
    assert pacer.hand_over_to(**ask, caught_up=True, now=11) == "B-2"
    pacer.forget("G-A")
    assert pacer.hand_over_to(**ask, caught_up=True, now=12) == "B-2"
    assert (
        pacer.hand_over_to(group_id="G-A", self_id="B-2", preferred="B-2", caught_up=True, now=99)
        is None
    )
