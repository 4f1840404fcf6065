"""Operator logs: one line per event, via the stdlib ``trio_broker`` logger.

Text lines read ``2026-11-27T05:00:00 INFO trio_broker role.changed broker_id=B-… role=leader``;
with JSON output each line is one object: ``{"ts": …, "level": …, "event": …, <fields>}``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger("trio_broker")


def _fmt(value: Any) -> str:
    """A field's value in a text line; JSON lines keep the value itself (numbers as numbers)."""
    if isinstance(value, Mapping):
        text = ",".join(f"{k}:{v}" for k, v in value.items())
    elif isinstance(value, list):
        text = ",".join(str(v) for v in value)
    else:
        text = str(value)
    if not text or any(c in text for c in ' ="\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def log_event(level: int, event: str, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        text = " ".join([event, *(f"{k}={_fmt(v)}" for k, v in fields.items())])
        logger.log(level, text, extra={"event": event, "fields": fields})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event = getattr(record, "event", None)
        body: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
        }
        if event is None:  # a plain logging call (an exception report, say)
            body["event"] = record.getMessage()
        else:
            body["event"] = event
            body.update({k: v for k, v in record.fields.items() if k not in body})
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S")
        )
    root = logging.getLogger("trio_broker")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
