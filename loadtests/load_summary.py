"""Read locust's CSV output and summarise a load test: one row per locustfile, and what failed.

Separate from the runner so it is tested without a cluster or locust: it reads only the files
``locust --csv PREFIX`` writes (``PREFIX_stats.csv``: one row per request name plus ``Aggregated``;
``PREFIX_failures.csv``: one row per distinct error).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class Summary:
    """The ``Aggregated`` row of one locustfile's run; ``problem`` says why there is none."""

    name: str
    requests: int = 0
    failures: int = 0
    median_ms: Optional[float] = None
    p95_ms: Optional[float] = None
    p99_ms: Optional[float] = None
    rps: float = 0.0
    problem: Optional[str] = None

    @property
    def failure_pct(self) -> float:
        return 100.0 * self.failures / self.requests if self.requests else 0.0

    @property
    def ok(self) -> bool:
        """A run passes with requests made and none failed: a run that made none measured nothing."""
        return self.problem is None and self.requests > 0 and self.failures == 0


def _number(value: Optional[str]) -> Optional[float]:
    """Locust writes ``N/A`` for percentiles of a name with no requests."""
    try:
        return float(value) if value not in (None, "", "N/A") else None
    except ValueError:
        return None


def read_stats(prefix: Path) -> dict[str, dict[str, str]]:
    """``PREFIX_stats.csv`` as {request name: row}; the total is under ``Aggregated``."""
    with open(f"{prefix}_stats.csv", newline="") as handle:
        return {row["Name"]: row for row in csv.DictReader(handle)}


def read_failures(prefix: Path) -> list[dict[str, str]]:
    """``PREFIX_failures.csv``: Method, Name, Error, Occurrences, most frequent first."""
    try:
        with open(f"{prefix}_failures.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError:
        return []
    return sorted(rows, key=lambda row: -int(row.get("Occurrences") or 0))


def summarise(name: str, prefix: Path) -> Summary:
    """The Aggregated row of ``PREFIX_stats.csv``, or a Summary that says why it could not be read."""
    try:
        total = read_stats(prefix).get("Aggregated")
    except FileNotFoundError:
        return Summary(name, problem=f"no {prefix}_stats.csv: locust did not finish (see its output above)")
    if total is None:
        return Summary(name, problem=f"{prefix}_stats.csv has no Aggregated row")
    try:
        return Summary(name, requests=int(total["Request Count"]), failures=int(total["Failure Count"]),
                       median_ms=_number(total["Median Response Time"]), p95_ms=_number(total["95%"]),
                       p99_ms=_number(total["99%"]), rps=float(total["Requests/s"]))
    except (KeyError, ValueError) as exc:
        return Summary(name, problem=f"{prefix}_stats.csv is not locust's stats format ({exc!r})")


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def table(summaries: list[Summary]) -> str:
    """An aligned text table: requests, failures, failure %, median/p95/p99 ms, req/s per locustfile."""
    header = ("locustfile", "requests", "failures", "fail %", "median ms", "p95 ms", "p99 ms", "req/s")
    rows = [header] + [(s.name, str(s.requests), str(s.failures), f"{s.failure_pct:.2f}", _ms(s.median_ms),
                        _ms(s.p95_ms), _ms(s.p99_ms), f"{s.rps:.1f}") for s in summaries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def read_exceptions(prefix: Path) -> list[dict[str, str]]:
    """``PREFIX_exceptions.csv``: Count, Message, Traceback, Nodes (errors in the locustfile's own code)."""
    try:
        with open(f"{prefix}_exceptions.csv", newline="") as handle:
            return list(csv.DictReader(handle))
    except FileNotFoundError:
        return []


def problem_lines(summaries: list[Summary], out: Path, limit: int = 5) -> list[str]:
    """Why each failing run failed, most frequent error first: what to print under the table."""
    lines: list[str] = []
    for s in summaries:
        if s.problem:
            lines.append(f"  {s.name}: {s.problem}")
        elif s.requests == 0:
            lines.append(f"  {s.name}: no requests were made (see {s.name}.log)")
        prefix = out / s.name
        lines += [f"  {s.name}: {row['Occurrences']}x {row['Method']} {row['Name']}: {row['Error'][:300]}"
                  for row in read_failures(prefix)[:limit]]
        lines += [f"  {s.name}: exception {row['Count']}x in the locustfile: {row['Message'][:300]}"
                  for row in read_exceptions(prefix)[:limit]]
    return lines
