"""Entry point of the PyInstaller bundle: the same ``main`` as the ``cellview`` console script."""

import sys

from cellview.cli import main

if __name__ == "__main__":
    sys.exit(main())
