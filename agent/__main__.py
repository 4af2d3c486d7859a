"""``python -m agent`` runs the ``campus-agent`` command."""

import sys

from agent.cli import main

sys.exit(main())
