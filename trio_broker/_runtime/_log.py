"""Operator logs: one line per event, ``event key=value ...``, via the stdlib logging module."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("trio_broker")


def _fmt(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' ="\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def log_event(level: int, event: str, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        parts = [event, *(f"{k}={_fmt(v)}" for k, v in fields.items())]
        logger.log(level, " ".join(parts))


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    root = logging.getLogger("trio_broker")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
