"""Operator logs: one line per event, as text or as JSON objects."""

from __future__ import annotations

import io
import json
import logging

import pytest

from trio_broker._runtime._log import configure_logging, log_event, logger


@pytest.fixture
def captured():
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield io.StringIO()
    logger.handlers[:], logger.level, logger.propagate = saved


def _attach(buffer: io.StringIO, fmt: str) -> None:
    configure_logging("INFO", fmt)
    logger.handlers[0].setStream(buffer)


def test_text_lines_are_event_then_key_values(captured):
    _attach(captured, "text")
    log_event(logging.INFO, "role.changed", broker_id="B-AAAAA", role="leader", note="two words")
    (line,) = captured.getvalue().splitlines()
    assert line.endswith(
        'INFO trio_broker role.changed broker_id=B-AAAAA role=leader note="two words"'
    )


def test_json_lines_are_one_object_each(captured):
    _attach(captured, "json")
    log_event(logging.WARNING, "request.rejected", peer="127.0.0.1:5", code="BAD_REQUEST")
    log_event(logging.DEBUG, "not.shown")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("connection.crashed peer=%s", "x")
    first, second = (json.loads(line) for line in captured.getvalue().splitlines())
    assert first["event"] == "request.rejected"
    assert (first["level"], first["peer"], first["code"]) == (
        "WARNING",
        "127.0.0.1:5",
        "BAD_REQUEST",
    )
    assert first["ts"].endswith("Z")
    assert second["event"] == "connection.crashed peer=x"
    assert "ValueError: boom" in second["exception"]


def test_field_values_keep_their_json_types_and_read_plainly_as_text(captured):
    fields = {"port": 9101, "ratio": 0.5, "on": True, "seeds": ["a:1", "b:2"]}
    fields["sources"] = {"port": "flag", "seeds": "env"}
    _attach(captured, "json")
    log_event(logging.INFO, "broker.settings", **fields)
    (line,) = captured.getvalue().splitlines()
    body = json.loads(line)
    assert {k: body[k] for k in fields} == fields
    assert type(body["port"]) is int
    captured.seek(0)
    captured.truncate()
    _attach(captured, "text")
    log_event(logging.INFO, "broker.settings", **fields)
    (line,) = captured.getvalue().splitlines()
    assert line.endswith(
        "broker.settings port=9101 ratio=0.5 on=True seeds=a:1,b:2 sources=port:flag,seeds:env"
    )
