"""The error type for bad user input, and how command-line tools report it."""

from __future__ import annotations

import sys
from typing import Callable, Sequence

from limubert_jax.log_filters import quiet_libraries


class LimuBertError(Exception):
    """Bad input (a file, a key, a shape, a value) explained in one line for the user."""


def run_cli(main: Callable[[Sequence[str] | None], None], argv: Sequence[str] | None = None) -> int:
    """Runs a command-line `main`, turning a `LimuBertError` into one stderr line and exit code 2."""
    quiet_libraries()
    try:
        main(argv)
    except LimuBertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
