"""python -m nanog4v.toy --out DIR [--n 2000] [--seed 0] [--frames 8] [--size 64] [--fps 8] [--force]:
write a toy world — clips, scenes and every data set of the nano recipe (the layout: worlddir.py)."""
import sys

from .worlddir import main

sys.exit(main())
