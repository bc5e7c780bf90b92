"""Several Ray nodes' Prometheus text expositions merged into one answer (pure: no Ray, no I/O).

Each node exports its own processes' metrics on its own port, and every export has a ``# HELP`` and a
``# TYPE`` line for the same families (``ray_serve_*``, ``ray_modelpool_*``). Pasted one after the other,
a family would appear twice, and Prometheus refuses a scrape with a second TYPE line for a name. So the
samples of each family are gathered under one HELP and one TYPE line, in the order families first appear.
A node that did not answer is named in a comment line at the top instead of failing the whole scrape.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional, Sequence

#: The content type of the text format Ray exports and Prometheus asks for by default.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


@dataclass(frozen=True)
class NodeExposition:
    """What one node's metrics export port answered: its text, or why there is none."""

    node: str  # host:port of the export
    text: Optional[str] = None
    error: str = ""


@dataclass
class _Family:
    help: str = ""
    type: str = ""
    samples: list[str] = field(default_factory=list)


def unreachable_line(node: str, error: str) -> str:
    """The comment that stands for a node's missing samples (Prometheus ignores comments)."""
    reason = " ".join(error.split())[:200]  # one line, whatever the exception said
    return f"# modelpool: node {node} unreachable" + (f" ({reason})" if reason else "")


def merge(expositions: Sequence[NodeExposition]) -> str:
    """One valid exposition: unreachable nodes first (as comments), then each family once with all its samples."""
    if len(expositions) == 1 and expositions[0].text is not None:
        return expositions[0].text  # one node (a cluster on one machine): already valid, and 1 MB is not re-parsed
    families: dict[str, _Family] = {}
    notes = [unreachable_line(e.node, e.error) for e in expositions if e.text is None]
    for exposition in expositions:
        if exposition.text is not None:
            _collect(exposition.text, families)
    lines = list(notes)
    for family in families.values():
        lines.extend(line for line in (family.help, family.type) if line)
        lines.extend(family.samples)
    return "\n".join(lines) + "\n" if lines else ""


def _collect(text: str, families: dict[str, _Family]) -> None:
    """Add one exposition's lines to ``families``: a sample belongs to the family whose HELP/TYPE came last
    when its name extends that family's (``x_bucket``, ``x_sum``, ``x_count`` of histogram ``x``), else to its own."""
    current: Optional[str] = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                current = parts[2]
                family = families.setdefault(current, _Family())
                if parts[1] == "HELP" and not family.help:
                    family.help = line
                elif parts[1] == "TYPE" and not family.type:
                    family.type = line
            continue  # other comments are the node's own business
        match = _NAME.match(line)
        if match is None:
            continue  # not a sample line; passing it on would break the whole scrape
        name = match.group(0)
        owner = current if current is not None and (name == current or name.startswith(current + "_")) else name
        families.setdefault(owner, _Family()).samples.append(line)
