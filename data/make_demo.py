"""Make the demo data: ``python data/make_demo.py [--force] [--velocity]``.

The same as ``python -m core demo``; see data/README.md for what is generated and where it goes.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.__main__ import main  # noqa: E402  (the repository root must be importable first)

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
