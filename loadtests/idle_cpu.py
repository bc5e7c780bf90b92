"""What an idle cluster costs: the CPU of every process of a fresh `modelpool start`, by process title, per variant.

Each variant is a name and environment settings for the cluster (``name=KEY=value,KEY=value``; an empty
variant is the defaults). The variants alternate round by round, each on a cluster of its own, so a
busy machine hits them alike:

    python -m loadtests.idle_cpu base= slow_loop=RAY_SERVE_CONTROL_LOOP_INTERVAL_S=0.5 --rounds 2

Measured after ``--settle`` seconds, over ``--seconds``, with the example models and nothing sent.
"""
from __future__ import annotations

import argparse
import time

from loadtests.local_cluster import bench_cluster
from loadtests.profile_serving import cpu_by_title


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """``name=K=v,K2=v2`` -> (name, {K: v, K2: v2})."""
    name, _, pairs = text.partition("=")
    return name, dict(pair.split("=", 1) for pair in pairs.split(",") if pair)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", help="name=KEY=value,... (name= alone: the defaults)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--settle", type=float, default=25.0, help="seconds after the start before measuring")
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    variants = dict(parse_variant(text) for text in args.variants)
    totals: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(args.rounds):
        for name, env in variants.items():
            with bench_cluster(env):
                time.sleep(args.settle)
                usage = cpu_by_title(args.seconds)
            totals[name].append(sum(usage.values()))
            top = ", ".join(f"{title} {share:.1f}" for title, share in list(usage.items())[:8])
            print(f"{name} round {round_ + 1}: all {totals[name][-1]:.1f}% of a core; {top}", flush=True)
    for name, values in totals.items():
        print(f"{name}: {', '.join(f'{value:.1f}' for value in values)} % of a core")


if __name__ == "__main__":
    main()
