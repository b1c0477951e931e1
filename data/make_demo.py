"""Make the demo data: ``python data/make_demo.py [--force] [--velocity]``.

The same as ``python -m core demo``; see data/README.md for what is generated and where it goes.
"""

import sys

from core.__main__ import main  # the project is installed (pip install -e ., done by ./dev)

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
