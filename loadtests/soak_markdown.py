"""The soak report as markdown (pure: a :class:`loadtests.soak_report.SoakReport` in, text out)."""
from __future__ import annotations

from typing import Any, Optional

from loadtests.soak_report import SoakReport


def _ms(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def verdict_lines(report: SoakReport) -> list[str]:
    return [f"{'PASS' if c.passed else 'FAIL'}  {c.name}: {c.detail}" for c in report.checks]


def render(report: SoakReport, title: str = "Soak run") -> str:
    plan = report.plan
    unit = "minute" if plan.bucket_s == 60 else f"{plan.bucket_s:g} s"
    out = [f"# {title}: {'PASS' if report.passed else 'FAIL'}", "",
           f"{plan.duration_s:g} s; warm-up {plan.warmup_s:g} s; grace {plan.grace_s:g} s after a replica kill, "
           f"{plan.management_grace_s:g} s after the management kill (management calls only); "
           f"process samples every {plan.sample_every_s:g} s; one row per {unit}.", "", "## Targets", "",
           *[f"- **{'PASS' if c.passed else 'FAIL'}** {c.name}: {c.detail}" for c in report.checks], "",
           f"## Requests per {unit}", ""]
    out += _table(["from", "requests", "ok", "failed", "excused", "refused (429)", "p50 ms", "p99 ms"],
                  [[_clock(b.start_s), b.requests, b.ok, b.failed, b.excused, b.refused, _ms(b.p50_ms), _ms(b.p99_ms)]
                   for b in report.buckets])
    out += ["", "p50/p99: answered inference requests, from sending to the whole answer read.", "",
            "## Requests by kind", ""]
    out += _table(["kind", "requests", "ok", "failed", "excused", "refused", "p50 ms", "p99 ms"],
                  [[kind, r["requests"], r["ok"], r["failed"], r["excused"], r["refused"], _ms(r["p50_ms"]),
                    _ms(r["p99_ms"])] for kind, r in report.kinds.items()])
    if report.failures:
        out += ["", "## Most frequent failures", ""]
        out += _table(["kind", "error", "excused", "times"],
                      [[kind, error.replace("|", "/").replace("\n", " "), "yes" if excused else "no", n]
                       for kind, error, excused, n in report.failures])
    out += ["", "## Kills", ""]
    out += _table(["at", "target", "process", "pid", "back after s"],
                  [[_clock(k.at_s), k.target, k.role, k.pid or "none found",
                    "" if k.back_after_s is None else f"{k.back_after_s:.1f}"] for k in report.kills])
    out += ["", "## Batch jobs", ""]
    out += _table(["submitted", "execution id", "rows", "state", "took s"],
                  [[_clock(j.submitted_s), j.execution_id, j.rows, j.state, f"{j.ended_s - j.submitted_s:.1f}"]
                   for j in report.jobs])
    out += ["", "## Processes: growth after the warm-up", "",
            "Judged: there at the end, with enough samples after its warm-up (the run's, or its own when it "
            "started later). RSS: median of its first samples after the warm-up -> median of its last ones. "
            "FDs: highest of the first samples -> median of the last ones.", ""]
    out += _table(["process", "pid", "seen", "RSS MB", "growth", "FDs", "verdict"],
                  [[g.key, g.pid, f"{_clock(g.first_s)}-{_clock(g.last_s)}",
                    f"{g.rss_base_mb:.0f} -> {g.rss_end_mb:.0f}" if g.judged else "",
                    f"{g.rss_growth:+.1%}" if g.judged else "",
                    f"{g.fds_base_max} -> {g.fds_end:g}" if g.judged else "",
                    ("ok" if g.rss_ok and g.fds_ok else "RSS" if g.fds_ok else "FDs" if g.rss_ok else "RSS, FDs")
                    if g.judged else f"not judged: {g.reason}"] for g in report.growth])
    for label, index, scale in (("RSS MB", 0, 2**20), ("open file descriptors", 1, 1)):
        out += ["", f"## {label} per {unit} (last sample of each)", ""]
        out += _table(["process", *[_clock(b.start_s) for b in report.buckets]],
                      [[key, *["" if cell is None else f"{cell[index] / scale:.0f}" for cell in series]]
                       for key, series in report.processes.items()])
    objects = report.objects
    out += ["", "## Object store after the soak's batch jobs", ""]
    if objects.get("error"):
        out.append(objects["error"])
    else:
        out += [f"{objects.get('jobs_ended', 0)} jobs ended ({objects.get('jobs_unfinished', 0)} not): "
                f"{objects.get('served', 0)} keys served by the API, {objects.get('stray_count', 0)} stray; retained "
                f"by design but read by nothing: {objects['retained_input']['keys']} inputs "
                f"({objects['retained_input']['bytes']} bytes), {objects['retained_idempotency']['keys']} idempotency "
                f"records ({objects['retained_idempotency']['bytes']} bytes).", ""]
        out += [f"- stray: `{key}`" for key in objects.get("stray", [])]
    return "\n".join(out) + "\n"
