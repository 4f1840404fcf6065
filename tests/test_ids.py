"""Identifiers of the wire contract (PROTOCOL.md, "Identifiers")."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_broker._ids import (
    BROKER_ID_RE,
    CLIENT_ID_RE,
    CLUSTER_ID_RE,
    QUEUE_ID_RE,
    check_id,
    cluster_of_queue,
    new_broker_id,
    new_client_id,
    new_cluster_id,
    new_queue_id,
)

_ALNUM = st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_SUFFIX5 = st.text(_ALNUM, min_size=5, max_size=5)


@pytest.mark.parametrize(
    ("make", "literal"),
    [
        (new_broker_id, r"B-[A-Z0-9]{5}"),
        (new_client_id, r"C-[A-Z0-9]{5}"),
        (new_cluster_id, r"G-[A-Z0-9]{5}"),
    ],
)
def test_generated_ids_match_their_pattern(make, literal):
    # Check against the contract's literal pattern, not only the module's own regex.
    rng = random.Random(1234)
    seen = set()
    for _ in range(500):
        value = make(rng)
        assert re.fullmatch(literal, value), value
        seen.add(value)
        assert re.fullmatch(literal, make()), "the system-random path must match too"
    # 500 draws out of 36**5: collisions would mean the suffix is not random at all.
    assert len(seen) > 490


def test_module_patterns_agree_with_contract():
    assert BROKER_ID_RE.fullmatch("B-AZ09Q")
    assert CLIENT_ID_RE.fullmatch("C-00000")
    assert CLUSTER_ID_RE.fullmatch("G-XYZ78")
    assert QUEUE_ID_RE.fullmatch("Q-XYZ78K589Z")
    for bad in ("B-az09q", "B-AZ09", "B-AZ09QQ", "X-AZ09Q", "B_AZ09Q", "B-AZ0-Q"):
        assert not BROKER_ID_RE.fullmatch(bad), bad


def test_queue_id_example_from_contract():
    # "cluster G-XYZ78 creates Q-XYZ78K589Z" and clients strip Q- and the last 5 characters.
    assert cluster_of_queue("Q-XYZ78K589Z") == "G-XYZ78"


@given(cluster_suffix=_SUFFIX5, seed=st.integers(0, 2**32))
def test_cluster_of_queue_inverts_new_queue_id(cluster_suffix, seed):
    cluster_id = "G-" + cluster_suffix
    queue_id = new_queue_id(cluster_id, random.Random(seed))
    assert re.fullmatch(r"Q-[A-Z0-9]{10}", queue_id)
    assert queue_id.startswith("Q-" + cluster_suffix)
    assert cluster_of_queue(queue_id) == cluster_id
    # The client-side routing rule of the contract gives the same answer.
    assert "G-" + queue_id[2:-5] == cluster_id


def test_new_queue_id_with_generated_cluster():
    for _ in range(200):
        cluster_id = new_cluster_id()
        queue_id = new_queue_id(cluster_id)
        assert QUEUE_ID_RE.fullmatch(queue_id)
        assert cluster_of_queue(queue_id) == cluster_id


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "Q-",
        "Q-XYZ78",
        "Q-XYZ78K589",  # one character short
        "Q-XYZ78K589ZZ",  # one character long
        "q-XYZ78K589Z",
        "Q-xyz78k589z",
        "G-XYZ78K589Z",
        "QXYZ78K589Z",
        "Q-XYZ78-589Z",
        " Q-XYZ78K589Z",
        "Q-XYZ78K589Z\n",
        "Q-XYZ78K589\u00c9",
    ],
)
def test_malformed_queue_ids_give_none(bad):
    assert cluster_of_queue(bad) is None


@given(st.text(max_size=20))
def test_cluster_of_queue_none_unless_well_formed(text):
    result = cluster_of_queue(text)
    if re.fullmatch(r"Q-[A-Z0-9]{10}", text):
        assert result == "G-" + text[2:7]
    else:
        assert result is None


def test_check_id():
    assert check_id("broker id", "B-ABCDE", BROKER_ID_RE) == "B-ABCDE"
    with pytest.raises(ValueError, match="broker id"):
        check_id("broker id", "B-abcde", BROKER_ID_RE)
    with pytest.raises(ValueError):
        check_id("broker id", 12345, BROKER_ID_RE)  # type: ignore[arg-type]
