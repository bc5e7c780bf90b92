"""The README's port tables, read as the tests check them against the sockets a cluster really listens on.

Each table under ``## Ports`` starts after a ``### `` heading and has the columns ``port | process | what | who``:
a port is a number, numbers joined by commas, a range (``10002-19999``), or ``any`` (chosen at start); a process
is one or more code spans, each matched as a substring of a process's name or command line.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

README = Path(__file__).resolve().parents[1] / "README.md"


@dataclass(frozen=True)
class PortRow:
    ports: str
    processes: tuple[str, ...]
    what: str

    def port_matches(self, port: int) -> bool:
        for part in self.ports.replace(" ", "").split(","):
            if part == "any":
                return True
            low, _, high = part.replace("–", "-").partition("-")
            if int(low) <= port <= int(high or low):
                return True
        return False

    def matches(self, port: int, process_text: str) -> bool:
        return self.port_matches(port) and any(name in process_text for name in self.processes)


def port_tables(readme: Path = README) -> dict[str, list[PortRow]]:
    """``### heading -> rows`` for every table of the README's ``## Ports`` section."""
    text = readme.read_text()
    section = text[text.index("\n## Ports\n"):]
    section = section[:section.find("\n## ", 1)]
    tables: dict[str, list[PortRow]] = {}
    heading: Optional[str] = None
    for line in section.splitlines():
        if line.startswith("### "):
            heading = line[4:].strip()
            tables[heading] = []
        elif heading and line.startswith("| ") and not line.startswith("| port ") and not line.startswith("| ---"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            tables[heading].append(PortRow(cells[0], tuple(re.findall(r"`([^`]+)`", cells[1])), cells[2]))
    return tables


def table(starting_with: str, readme: Path = README) -> list[PortRow]:
    """The rows of the table whose heading starts with ``starting_with``."""
    matching = [rows for heading, rows in port_tables(readme).items() if heading.startswith(starting_with)]
    if len(matching) != 1:
        raise LookupError(f"no single port table headed {starting_with!r} in {readme}")
    return matching[0]


def undocumented(sockets: dict[tuple[str, int], str], rows: list[PortRow]) -> dict[tuple[str, int], str]:
    """The sockets (``(address, port) -> process text``) that no row of ``rows`` names."""
    return {address: owner for address, owner in sockets.items()
            if not any(row.matches(address[1], owner) for row in rows)}
