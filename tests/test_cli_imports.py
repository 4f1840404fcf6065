"""What ``python -m trio_broker`` imports before it knows the command: only what the commands'
parsers need. The mirror check, that the client commands skip the broker, is in
``test_public_api.py``."""

from __future__ import annotations

import subprocess
import sys

CLIENT_MODULES = ("anyio", "trio_broker._client", "trio_broker.client", "trio_broker.sync")


def _imported_by(argv: list[str]) -> list[str]:
    """The client modules a fresh interpreter holds after ``python -m trio_broker ARGV``."""
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['trio_broker', *{argv!r}]\n"
        "try:\n"
        "    runpy.run_module('trio_broker', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "names = [m for m in sys.modules if m.split('.')[0] == 'anyio' or m.startswith("
        f"{CLIENT_MODULES[1:]!r})]\n"
        "print(' '.join(sorted(names)), file=sys.stderr)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert "usage: " in out.stdout
    return out.stderr.split()


def test_the_node_command_does_not_import_the_client():
    """``node`` (its parser: ``--help`` exits once it is built and parsed) pays neither for the
    client library nor for anyio, about a fifth of the parser's start-up."""
    assert _imported_by(["node", "--help"]) == []
