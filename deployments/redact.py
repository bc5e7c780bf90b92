"""Error text fit for clients: no server paths and no tracebacks (unless ``--debug``).

Messages that reach a client often carry text nobody here wrote: a handler's exception, a loader's
``FileNotFoundError``, a ``SyntaxError`` naming the module's file, Serve's message for a deployment
that failed (a whole traceback). Those show where modelpool keeps its state and how the machine is
laid out (``/root/.modelpool/cache/...``, ``/opt/venv/lib/python3.11/...``), which helps an attacker
and nobody else. So the HTTP layers pass every error message through :func:`public_message`
unless ``--debug`` is on; the full text still goes to the server's log.

A server path is an absolute path whose first segment is a directory at the root of this machine
(``/root``, ``/tmp``, ``/usr``, ...): URL paths such as ``/v2/models/iris/infer`` are left alone.
The last segment (usually a file name from the archive, which the caller knows) is kept.
"""
from __future__ import annotations

import os
import re
from functools import lru_cache

PLACEHOLDER = "<server path>"
_TRACEBACK = "Traceback (most recent call last):"
_PATH = re.compile(r"(?<![\w.~/:-])/[^\s'\"(),;:<>\[\]{}|*?`]+")


def public_message(text: str) -> str:
    """``text`` without tracebacks (the exception line stays) and with server paths replaced."""
    return _PATH.sub(_replace_path, _without_traceback(text))


def _without_traceback(text: str) -> str:
    start = text.find(_TRACEBACK)
    if start < 0:
        return text
    lines = [line.strip() for line in text[start + len(_TRACEBACK):].splitlines() if line.strip()]
    before = text[:start].rstrip()
    last = lines[-1] if lines else ""
    return " ".join(part for part in (before, last, "(traceback in the server log)") if part)


def _replace_path(match: re.Match[str]) -> str:
    path = match.group(0)
    segments = [segment for segment in path.split("/") if segment]
    if not segments or segments[0] not in _root_directories():
        return path
    return PLACEHOLDER if len(segments) == 1 else f"{PLACEHOLDER}/{segments[-1]}"


@lru_cache(maxsize=1)
def _root_directories() -> frozenset[str]:
    """Directories at ``/``: read once per process (an error path, but errors can come in floods)."""
    try:
        return frozenset(entry.name for entry in os.scandir("/") if entry.is_dir())
    except OSError:
        return frozenset()
