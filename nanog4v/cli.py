"""Argument checks the command lines share (chat.py, train.py, `python -m nanog4v.eval`): each returns the
problem as one line, and each command raises it as its own error (printed `error: …`, exit status 2)."""
from __future__ import annotations

import math
from pathlib import Path


def number_flag_problem(args, flags: dict[str, tuple]) -> str | None:
    """The first number flag that is not finite or lies outside its range, as "--flag: must be …, not X";
    None when all fit. `flags` maps an argparse name to (lowest, highest or None, whether the lowest itself
    is allowed); a flag left at None (not given, no default) is not checked."""
    for name, (low, high, low_ok) in flags.items():
        value = getattr(args, name)
        if value is None:
            continue
        if not math.isfinite(value) or value < low or value == low and not low_ok or high is not None and value > high:
            if high is None:
                allowed = f"{'>=' if low_ok else '>'} {low}"
            else:
                allowed = f"from {low} to {high}" if low_ok else f"in ({low}, {high}]"
            return f"--{name.replace('_', '-')}: must be a finite number {allowed}, not {value}"
    return None


def file_in_the_way(directory: Path) -> Path | None:
    """The file (not a directory) at `directory` or at its nearest existing parent: where no directory
    can be made. None when the directory exists or can be created."""
    for path in [directory, *directory.parents]:
        if path.exists():
            return None if path.is_dir() else path
    return None
