"""``python -m trio_broker.testing.sim``: see the package's docstring."""

import sys

from ._cli import main

sys.exit(main())
