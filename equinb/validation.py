"""Argument checks that several modules share: a name from a fixed list, a flag.

Each returns the value checked (normalised where the check allows another spelling) or raises at once, naming the
argument and listing what is valid, so that a bad argument fails before any work and says how to fix it.
"""

from typing import Any, Iterable

__all__ = ["check_choice", "check_setting", "check_flag"]


def check_choice(value: Any, valid: Iterable[str], what: str, *, any_case: bool = False, note: str = "") -> str:
    """``value`` if it is one of ``valid`` (with ``any_case``: the one it names in any case and with spaces around,
    as ``valid`` spells it), else a ValueError "unknown <what> <value>; valid: 'a', 'b'<note>". ``note`` adds what
    the list alone does not say (an alias, a common confusion)."""
    valid = tuple(valid)
    if any_case and isinstance(value, str):
        spelled = {v.lower(): v for v in valid}.get(value.strip().lower())
        if spelled is not None:
            return spelled
    elif isinstance(value, str) and value in valid:
        return value
    raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(map(repr, valid))}{note}")


def check_setting(name: str, value: Any, valid: Iterable[str]) -> None:
    """A ValueError "<name>=<value> is not valid; choose one of 'a', 'b'" unless ``value`` is one of ``valid``: the
    form for a named setting (a configuration field, a chapter's parameter), where ``check_choice`` names an
    argument."""
    valid = tuple(valid)
    if not isinstance(value, str) or value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {', '.join(map(repr, valid))}")


def check_flag(value: Any, what: str) -> bool:
    """``value`` as a bool if it equals True or False (a bool, 0 or 1, a NumPy or one-element torch bool), else a
    TypeError: ``bool("False")`` is True, so a flag read from a text file would otherwise turn an option on
    silently."""
    try:
        plain = not isinstance(value, str) and value in (True, False)
    except (RuntimeError, TypeError, ValueError):  # a tensor of several values, an object with no truth value
        plain = False
    if not plain:
        raise TypeError(f"{what} must be True or False, got {value!r} ({type(value).__name__})")
    return bool(value)
