"""nox sessions: `nox -s tests` (the default suite), `lint`, and the long-running suites."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The default suite, as CI runs it."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "-q", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", "trio_broker", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "trio_broker", "tests", "benchmarks", "noxfile.py")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Throughput and latency of a local broker; prints figures and writes them to a file."""
    session.install("-e", ".")
    session.run("python", "-m", "benchmarks", *session.posargs)
