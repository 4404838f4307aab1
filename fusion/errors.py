"""The command line's error vocabulary: which exceptions mean bad input, its exit status, one-line messages.

Shared by :mod:`fusion.cli` (which prints them) and :mod:`fusion.runs` (which raises them while building runs).
"""

from __future__ import annotations

#: Exceptions that mean "bad input" on the command line (one line on stderr, exit status 2).
INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, FileNotFoundError)
#: Exit status for bad input, as for a usage error.
EXIT_BAD_INPUT = 2


def one_line(message: str) -> str:
    """``message`` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(message.split())


def hydra_message(err: BaseException) -> str:
    """The gist of a Hydra error: its first two non-empty lines without links to the documentation."""
    lines = [line for line in str(err).splitlines() if line.strip() and not line.startswith("See http")]
    return one_line(" ".join(lines[:2])) or type(err).__name__


__all__ = ["EXIT_BAD_INPUT", "INPUT_ERRORS", "hydra_message", "one_line"]
