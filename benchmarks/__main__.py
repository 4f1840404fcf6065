"""`python -m benchmarks` (what `nox -s bench` runs): the standard set, saved to a file."""

import sys

from trio_broker._cli import main

sys.exit(main(["bench", "--output", "benchmarks/results/latest.json", *sys.argv[1:]]))
