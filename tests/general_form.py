"""The general encoder of a log payload, which the hand-written group forms
(``_protocol/_group_bytes.py``) must match byte for byte: shared by their tests."""

from __future__ import annotations

import orjson
import pytest

from trio_broker._core import _commands as cmd
from trio_broker._protocol._entries import encode_payload, payload_to_obj


def general_bytes(group: cmd.CommandGroup) -> bytes:
    """The group's bytes as the general form writes them (orjson over its JSON object)."""
    return orjson.dumps(payload_to_obj(group))


def assert_encoded_as_general(group: cmd.CommandGroup) -> bytes | None:
    """``encode_payload(group)`` gives the general form's bytes, or refuses the group with the
    general form's error; those bytes (None when refused)."""
    try:
        expected = general_bytes(group)
    except orjson.JSONEncodeError:
        with pytest.raises(orjson.JSONEncodeError):
            encode_payload(group)
        return None
    assert encode_payload(group) == expected
    return expected
