"""The simulator carries entries as the brokers do (``trio_broker/testing/sim/_entries.py``),
on every seed, with or without the wire: a replica's entries are decoded from the bytes the
leader encoded (a group of plain appends in runs as columns), every log holds bytes that a
start decodes, and a run of appends answers with its results made later (``AppendedRun``).
Each of those decoders or lazy forms, broken on purpose, fails a seed without the wire that
passed before, when none of them ran in the simulator."""

from __future__ import annotations

import attrs

from trio_broker._core import _append_columns, _appended_run
from trio_broker._core._commands import AppendMessage
from trio_broker._protocol import _entries
from trio_broker.testing.sim import run_seed

SEED_COLUMNS, SEED_LOG, SEED_RUNS = 17, 4, 12
"""Seeds (without the wire) whose replicas decode groups of appends in runs, whose brokers
restart on logs of plain appends, and whose leaders answer runs of appends, early."""


def test_entries_are_decoded_stored_and_answered_as_the_brokers_do():
    r = run_seed(SEED_COLUMNS, wire=False)
    assert r.ok, r.error
    assert not r.params.wire
    assert r.stats["replica_columns"] > 0  # (groups of appends applied as decoded columns)
    assert r.stats["results_as_runs"] > 0  # (runs of appends answered by an AppendedRun)
    assert r.stats["log_read_back"] > 0  # (entries decoded from the log's bytes at starts)


def test_a_replica_decoding_its_columns_wrong_is_caught(monkeypatch):
    """A group's columns that make their appends out of order (the first two swapped)."""
    real = _append_columns.AppendColumns._make

    def swapped(self):
        made = real(self)
        return (made[1], made[0], *made[2:]) if len(made) > 1 else made

    monkeypatch.setattr(_append_columns.AppendColumns, "_make", swapped)
    r = run_seed(SEED_COLUMNS, wire=False)
    assert not r.ok
    assert "committed entry" in r.error and "changed" in r.error, r.error


def test_a_log_read_back_wrong_is_caught(monkeypatch):
    """A start's decode of the log (``decode_payload``, what ``read_log`` runs) that reads a
    plain append's stamp one off."""
    real = _entries.decode_payload

    def stamp_off(raw):
        payload = real(raw)
        if type(payload) is AppendMessage and payload.appended_ms is not None:
            payload = attrs.evolve(payload, appended_ms=payload.appended_ms + 1)
        return payload

    monkeypatch.setattr(_entries, "decode_payload", stamp_off)
    r = run_seed(SEED_LOG, wire=False)
    assert not r.ok
    assert "state machine safety" in r.error or "changed" in r.error, r.error


def test_a_run_of_results_numbered_wrong_is_caught(monkeypatch):
    """A run's results made one number off when a leader's answers read them."""

    def off_by_one(self):
        return tuple(_appended_run.appended_results(self.first + 1, self.size))

    monkeypatch.setattr(_appended_run.AppendedRun, "_make", off_by_one)
    r = run_seed(SEED_RUNS, wire=False)
    assert not r.ok
    assert "acknowledged append" in r.error, r.error
