"""nox sessions: `tests` (the default suite, as CI runs it) and `lint` by default; `sim`,
`fault`, `powerloss` and `bench` are the long runs: the simulator swarm, the chaos suite, the
power-cut suites, the benchmarks."""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The default suite, as CI runs it."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "-q", "-n", "2", *session.posargs)


LINTED = ["trio_broker", "tests", "benchmarks", "docs/examples", "noxfile.py"]

TYPED = [
    # The public modules, strictly: what users import and call.
    "trio_broker/__init__.py",
    "trio_broker/_errors.py",
    "trio_broker/client.py",
    "trio_broker/_client",
    "trio_broker/sync.py",
    "trio_broker/_address.py",
    # The example programs, as a user's code would be checked against the public API.
    "docs/examples",
]


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff, and mypy --strict on the public modules (the modules they import are read for
    their types, their own errors silenced: ``--follow-imports=silent``)."""
    session.install("-e", ".", "ruff>=0.6", "mypy>=1.11")
    session.run("ruff", "check", *LINTED)
    session.run("ruff", "format", "--check", *LINTED)
    session.run("mypy", "--strict", "--follow-imports=silent", *TYPED)


@nox.session(python=PYTHON)
def sim(session: nox.Session) -> None:
    """A swarm of simulator seeds across all cores: `nox -s sim -- --seeds 10000`; then every
    deliberately broken core on the first 1,000 seeds of every fault mix, and every broken
    leadership balancer on the first 1,000 seeds with several groups, each of which must be
    caught (the default suite scans a few dozen seeds per mutant)."""
    session.install("-e", ".[test]")
    args = session.posargs or ["--seeds", "1000"]
    if "--jobs" not in args:
        args = [*args, "--jobs", str(os.cpu_count() or 1)]
    session.run("python", "-m", "trio_broker.testing.sim", *args)
    session.run(
        "python",
        "-m",
        "pytest",
        "tests/sim/test_sim.py",
        "tests/sim/test_sim_replication_groups.py",
        "-k",
        "catches_every_mutant or broken_balancer",
        "-v",
        "-s",
        env={"TRIO_BROKER_SIM_MUTANTS": "1000"},
    )


@nox.session(python=PYTHON)
def fault(session: nox.Session) -> None:
    """The real-process chaos suite: brokers killed, paused and partitioned under load."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "tests/chaos", "--chaos", "-v", *session.posargs)


@nox.session(python=PYTHON)
def powerloss(session: nox.Session) -> None:
    """Power cuts on real SQLite stores: every long run marked ``powerloss`` (single brokers,
    three-broker clusters, the shared log and its in-step saves, several groups per broker on
    a shared log with I/O errors; the default suite runs a short version of each)."""
    session.install("-e", ".[test]")
    session.run(
        "python",
        "-m",
        "pytest",
        "tests",
        "-m",
        "powerloss",
        "-v",
        *session.posargs,
        env={"TRIO_BROKER_POWERLOSS": "1"},
    )


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Throughput and latency of a local 3-broker cluster; prints figures, writes a file."""
    session.install("-e", ".")
    session.run("python", "-m", "benchmarks", *session.posargs)
