"""Small helpers that every section's checks share: what counts as a number, and the name a typo was meant to be."""

from __future__ import annotations

import difflib
import math
from typing import Any


def bad_number(x: Any) -> bool:
    """Not a finite int or float (bools are not numbers here)."""
    return not isinstance(x, (int, float)) or isinstance(x, bool) or math.isnan(x) or math.isinf(x)


def did_you_mean(name: str, options) -> str:
    near = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean '{near[0]}'?)" if near else ""
