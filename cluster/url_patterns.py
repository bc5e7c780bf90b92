"""Allow-list patterns for model URLs: parsed and checked once, at start.

Lives in ``cluster`` because settings validate the flag's value before anything else starts;
``modelpool.management.url_checks`` applies the patterns.
"""
from __future__ import annotations

import re
from functools import lru_cache

_SEPARATOR = re.compile(r"\n|,(?![^{}]*\})")


def parse_allowed_urls(text: str) -> tuple[str, ...]:
    """Split a flag/env value into regexes: one per line or comma-separated.

    A comma inside a ``{m,n}`` quantifier does not split; any other comma in a pattern needs the
    one-per-line form. Each pattern is compiled so a typo fails at startup (``ValueError``).
    """
    patterns = (part.strip() for part in _SEPARATOR.split(text or ""))
    result = tuple(p for p in patterns if p)
    for pattern in result:
        compile_pattern(pattern)
    return result


@lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"allowed URL pattern {pattern!r} is not a valid regular expression: {exc}") from None
