"""The command line's exit statuses, and the argument parser that uses them.

One status per kind of outcome, the same for every command, so that a script or a supervisor
can tell "fix the command" from "the brokers are down":

====  =====================================================================================
0     success
1     the broker refused the request, or no answer came within ``--timeout``; a node or a
      backup that could not start or finish (data folder in use, identity mismatch, ...)
2     no broker could be reached (``client``: every seed was tried)
64    usage error: an unknown flag, a bad value, a missing argument; nothing was done
      (``EX_USAGE`` of sysexits.h)
====  =====================================================================================
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_UNREACHABLE = 2
EXIT_USAGE = 64

EXIT_STATUS_HELP = (
    "exit status: 0 success; 1 the broker refused the request, time ran out, or the command "
    "failed; 2 no broker could be reached; 64 usage error (nothing was done)"
)
"""The table above in one line, for ``--help`` epilogs."""


class UsageParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors exit with :data:`EXIT_USAGE`, not argparse's 2
    (which the client command uses for "no broker could be reached").

    Sub-parsers made with ``add_subparsers`` inherit the class, so every command behaves alike.
    """

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def leaf(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of one of ``kinds`` in ``exc`` or the groups nested in it."""
    if isinstance(exc, kinds):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := leaf(inner, kinds)) is not None:
                return found
    return None
