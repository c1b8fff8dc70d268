"""``python -m cellview.cli ...`` runs the `cellview` command."""

import sys

from cellview.cli.program import main

sys.exit(main())
