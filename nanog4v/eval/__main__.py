"""python -m nanog4v.eval --ckpt DIR [--data WORLD] [--json FILE]: Tables 1–4 (see tables.py)."""
import sys

from .tables import main

sys.exit(main())
