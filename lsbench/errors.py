"""The one user-facing error type: its message names what was wrong and the fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LsbenchError(Exception):
    """A mistake the user can fix; `lsbench.cli` prints it as one clean line and exits 1."""


def unknown_choice(kind: str, value: str, choices: Iterable[str], where: str = "") -> LsbenchError:
    """An error for a name that is not one of `choices`, with a close-match suggestion."""
    choices = sorted(choices)
    close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    place = f" in {where}" if where else ""
    return LsbenchError(
        f"unknown {kind} {value!r}{place}.{hint} Valid {kind}s: {', '.join(choices)}."
    )
