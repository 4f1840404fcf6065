"""The long power-loss runs: skipped unless ``TRIO_BROKER_POWERLOSS`` is set, and marked
``powerloss`` so that ``nox -s powerloss`` (``pytest tests -m powerloss``) selects every one
of them, in whichever file it is."""

from __future__ import annotations

import os
from typing import TypeVar

import pytest

T = TypeVar("T")


def LONG(test: T) -> T:
    """Mark ``test`` as one of the long power-loss runs."""
    skipped = pytest.mark.skipif(
        not os.environ.get("TRIO_BROKER_POWERLOSS"),
        reason="the long power-loss runs: nox -s powerloss (or TRIO_BROKER_POWERLOSS=1)",
    )(test)
    return pytest.mark.powerloss(skipped)  # type: ignore[no-any-return]
