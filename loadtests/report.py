"""How every benchmark ends: print its table and keep a copy under results/."""
from __future__ import annotations

from pathlib import Path


def publish(table: str, out: str) -> None:
    print()
    print(table)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table + "\n")
