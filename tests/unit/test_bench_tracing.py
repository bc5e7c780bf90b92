"""loadtests.bench_tracing's pure parts: the three ratios come out of the rounds as medians and per-round values,
the shim makes a fresh interpreter import modelpool from the baseline tree rather than this checkout, and the
report says what the reader needs (no Ray, no cluster)."""
import argparse
import os
from pathlib import Path

import pytest

from loadtests.bench_tracing import (CHECKED_MODULES, CONFIGS, ROOT, Comparison, Extras, baseline_env, build_shim,
                                     comparisons, misplaced, report, resolved_files, shim_links)
from loadtests.wrk import LoadResult


def run(rps: float, errors: int = 0) -> LoadResult:
    return LoadResult(rps, 20.0, 60.0, errors)


RUNS = {  # configuration -> round -> runs
    "baseline": [[run(2000), run(2000)], [run(1800)], [run(2100), run(2300)]],
    "off": [[run(2100)], [run(1600), run(1800)], [run(2200, errors=1)]],
    "page": [[run(2100)], [run(1530)], [run(2090)]],
    "traced": [[run(2079)], [run(1615), run(1615)], [run(2156)]],
}


def test_a_round_is_the_mean_of_its_runs_and_the_ratios_pair_rounds():
    traced = Comparison("traced / off", "traced", "off", 0.95)
    assert traced.per_round(RUNS) == pytest.approx([0.99, 0.95, 0.98])
    # over every run: traced 1615, 1615, 2079, 2156 -> 1847; off 1600, 1800, 2100, 2200 -> 1950
    assert traced.of_medians(RUNS) == pytest.approx(1847 / 1950)
    assert traced.met(traced.per_round(RUNS))
    assert not traced.met([0.99, 0.90, 0.94])


def test_the_page_is_compared_with_the_off_runs_of_its_round():
    page = Comparison("page / not", "page", "off", 0.95)
    assert page.per_round(RUNS) == pytest.approx([1.0, 0.9, 0.95])
    assert page.met(page.per_round(RUNS))  # the median, 0.95, reaches the target though one round is 0.9
    assert not page.met([1.0, 0.9, 0.94])


def test_no_target_means_the_rounds_disagree_on_the_sign():
    off = Comparison("off / baseline", "off", "baseline", None)
    assert off.per_round(RUNS) == pytest.approx([1.05, 1700 / 1800, 1.0])
    assert off.met(off.per_round(RUNS))
    assert not off.met([1.03, 1.02, 1.04]) and not off.met([0.97, 0.99, 0.98])


def test_the_three_comparisons_name_the_baseline_and_the_targets():
    found = comparisons("b37dc4c")
    assert [(c.numerator, c.denominator, c.target) for c in found] == [
        ("off", "baseline", None), ("traced", "off", 0.95), ("page", "off", 0.95)]
    assert "b37dc4c" in found[0].label


def fake_tree(root: Path) -> Path:
    """A baseline tree as ``git archive`` leaves it: the face and the three layers, with the checked modules."""
    for module in (*CHECKED_MODULES, "modelpool.cluster.net"):
        parts = module.split(".")[1:]
        folder = root / "modelpool" if len(parts) == 1 else root.joinpath(*parts[:-1])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "__init__.py").touch()
        (folder / f"{parts[-1]}.py").write_text("")
    (root / "modelpool" / "__pycache__").mkdir()
    return root


def test_the_shim_links_the_face_and_the_layers(tmp_path):
    source = fake_tree(tmp_path / "src")
    links = shim_links(source)
    assert links == {"modelpool/__init__.py": source / "modelpool" / "__init__.py",
                     "modelpool/cli.py": source / "modelpool" / "cli.py",
                     "modelpool/cluster": source / "cluster", "modelpool/deployments": source / "deployments",
                     "modelpool/management": source / "management"}
    shim = build_shim(source, tmp_path / "shim")
    assert (shim / "modelpool").is_dir() and not (shim / "modelpool").is_symlink()
    assert os.readlink(shim / "modelpool" / "cluster") == str(source / "cluster")


def test_a_face_folder_named_like_a_layer_is_refused(tmp_path):
    source = fake_tree(tmp_path / "src")
    (source / "modelpool" / "cluster").mkdir()
    with pytest.raises(ValueError, match="cluster"):
        shim_links(source)


def test_a_fresh_interpreter_imports_the_baseline_through_the_shim_and_not_this_checkout(tmp_path):
    """The editable install's finder must lose to the shim; from this checkout's cwd it wins, which the check sees."""
    source = fake_tree(tmp_path / "src")
    shim = build_shim(source, tmp_path / "shim")
    through_shim = resolved_files(baseline_env(shim), shim)
    assert set(through_shim) == set(CHECKED_MODULES) and misplaced(through_shim, source) == {}
    # Ray would put this cwd first on the replicas' path (a light module: the real ones import Ray)
    from_checkout = resolved_files(baseline_env(shim), ROOT, ["modelpool.cluster.net"])
    assert misplaced(from_checkout, source) == from_checkout
    assert all(Path(p).is_relative_to(ROOT) for p in from_checkout.values())


def test_the_report_has_every_configuration_ratio_and_proof():
    extras = Extras(baseline_commit="b37dc4caf4d53cbed9d0f6714d574b24697b1125",
                    baseline_files={"modelpool.cli": "/tmp/x/src/modelpool/cli.py"},
                    replica_files={"SERVE_REPLICA::iris#1": "/tmp/x/src/deployments/rest_entry.py"},
                    ui_status={"baseline": 404, "current": 401}, spans=[(84, 21, 21000)] * 3, refreshes=[7, 6, 7],
                    browser_cpu_s=[0.8, 0.96, 0.64], seconds_taken=840)
    text = report(RUNS, extras, argparse.Namespace(rounds=3, runs=2, seconds=8, baseline_rev="b37dc4c"))
    assert "took 14.0 min" in text and f"{os.cpu_count()} cores" in text and "2 runs of 8s" in text
    assert "| build without tracing (b37dc4c = b37dc4caf4d5), fresh cluster | 2000 | 20.00 | 60.00 | 0 |" in text
    assert "| current build, tracing off, fresh cluster | 1950 | 20.00 | 60.00 | 1 | 2100, 1700, 2200 |" in text
    assert ("| tracing on at 1% / tracing off | 0.980x | 0.947x | 0.990, 0.950, 0.980 | >= 0.95x | yes |") in text
    assert "| no difference beyond the noise | yes |" in text
    assert "| status page open / not open (tracing off, same cluster) | 0.950x |" in text
    assert "84 spans in 21 traces of ~21000 requests (0.10%)" in text
    assert "7, 6, 7" in text and "baseline 404, current 401" in text
    assert f"used 0.80, 0.96, 0.64 CPU seconds in those runs (median {0.8 / (8 * os.cpu_count()):.1%} of" in text
    assert all(f"| {c}" not in text for c in CONFIGS)  # rows are labelled for the reader, not by key
