"""``python -m openrouter_sync``: the same as the ``openrouter-sync`` command."""

import sys

from .cli import main

sys.exit(main())
