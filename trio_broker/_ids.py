"""Identifiers of the wire contract: brokers, clients, clusters and queues.

``B-XXXXX`` (broker), ``C-XXXXX`` (client), ``G-XXXXX`` (cluster): a prefix and five characters
from ``A-Z0-9``. A queue id is ``Q-`` + the cluster id without ``G-`` + five more characters, so a
client routes a queue to its cluster by its id alone.
"""

from __future__ import annotations

import random
import re
import string

_ALPHABET = string.ascii_uppercase + string.digits
_SUFFIX = 5

BROKER_ID_RE = re.compile(r"B-[A-Z0-9]{5}")
CLIENT_ID_RE = re.compile(r"C-[A-Z0-9]{5}")
CLUSTER_ID_RE = re.compile(r"G-[A-Z0-9]{5}")
QUEUE_ID_RE = re.compile(r"Q-([A-Z0-9]{5})[A-Z0-9]{5}")

_system_random = random.SystemRandom()


def _suffix(rng: random.Random | None) -> str:
    r = rng or _system_random
    return "".join(r.choice(_ALPHABET) for _ in range(_SUFFIX))


def new_broker_id(rng: random.Random | None = None) -> str:
    return "B-" + _suffix(rng)


def new_client_id(rng: random.Random | None = None) -> str:
    return "C-" + _suffix(rng)


def new_cluster_id(rng: random.Random | None = None) -> str:
    return "G-" + _suffix(rng)


def new_queue_id(cluster_id: str, rng: random.Random | None = None) -> str:
    return "Q-" + cluster_id[2:] + _suffix(rng)


def cluster_of_queue(queue_id: str) -> str | None:
    """The cluster a queue id belongs to, or None if it is not a well-formed queue id."""
    m = QUEUE_ID_RE.fullmatch(queue_id)
    return "G-" + m.group(1) if m else None


def check_id(kind: str, value: str, pattern: re.Pattern[str]) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"{kind} must look like {pattern.pattern!r}, got {value!r}")
    return value
