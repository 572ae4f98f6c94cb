"""``python -m zoo.train.main --config configs/train/<recipe>.json`` (what ``zoo train`` runs)."""
from __future__ import annotations

import sys

from zoo.train.loop import main

if __name__ == "__main__":
    sys.exit(main())
