"""What counts as a number and as a whole number in the config and data checks.

Config values come from YAML through yacs, annotation values from JSON. ``True`` is an ``int`` to
Python but never a count, a size or a coordinate here; NaN and infinity are floats but never a
probability, a scale or a box coordinate. Every check that names an offending key uses these two
predicates, so that they agree on what they refuse.
"""
import math

__all__ = ["is_number", "is_whole_number"]


def is_number(value) -> bool:
    """True for a finite ``int`` or ``float`` (``bool`` excluded: ``True`` is not 1.0 here);
    False for anything else (NaN, infinity, strings, ``None``, numpy scalars)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_whole_number(value) -> bool:
    """True for an ``int`` that is not a ``bool`` (counts, sizes in pixels, iterations); False for
    floats, even 2.0, so that a YAML ``2.0`` for an iteration count is refused rather than
    silently truncated."""
    return isinstance(value, int) and not isinstance(value, bool)
