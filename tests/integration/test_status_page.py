"""The status page on the real cluster, in a real headless browser (Debian's chromium driven by playwright).

What a user sees and does: the login form and a refused token, the page after logging in, iris with its replicas on
their node and its traffic, a batch job's bar moving to the end, a scale from the page that the management API then
reports, and set-default and cancel each asking for confirmation first.

Set ``MODELPOOL_UI_SCREENSHOT=docs/status-page.png`` to save the README's screenshot (taken while the batch job runs).
"""
from __future__ import annotations

import os
import re

import pytest
import requests
from playwright.sync_api import Page, expect

from tests.browser import browser_fixture, page_fixture  # noqa: F401 (fixtures)
from tests.integration.handler_models import store_handler_archive
from tests.integration.test_batches import SLOW_HANDLER
from tests.integration.test_management import register_together

pytestmark = pytest.mark.integration

ROW = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [6.3, 3.3, 6.0, 2.5]}]}
#: test_batches' model that takes a second per call: a job of N thousand rows scores a partition of 1,000 a second
SLOW = "slow"
FLOWER = "ui_flower"
LONG_MS = 120_000  # a replica starting, a job scoring on a busy 2-core machine


@pytest.fixture(scope="module")
def slow_model(cluster, tmp_path_factory) -> str:
    """A model for batch jobs that run long enough to watch (the generic pool's: no replica of its own). test_batches
    registers the same one; whichever module comes first does, and it stays (unregistering it takes a redeploy)."""
    if requests.get(f"{cluster.url}/models/{SLOW}", headers=cluster.auth, timeout=30).status_code == 404:
        archive = store_handler_archive(cluster, tmp_path_factory.mktemp("slow"), SLOW, SLOW_HANDLER)
        registered = requests.post(f"{cluster.url}/models", params={"url": archive, "synchronous": "true"},
                                   headers=cluster.auth, timeout=300)
        assert registered.status_code in (200, 409), registered.text
    return SLOW


def start_slow_job(cluster, admin, partitions: int) -> str:
    records = [[1.0, 2.0]] * (1000 * partitions)
    started = admin.post(f"{cluster.url}/batches", json={"service": SLOW, "records": records, "parallel_count": 1})
    assert started.status_code == 202, started.text
    return started.json()["executionId"]


def sign_in(page: Page, cluster) -> None:
    page.goto(f"{cluster.url}/ui")
    page.get_by_test_id("token").fill(cluster.token)
    page.get_by_test_id("login").click()
    expect(page.get_by_test_id("refresh-status")).to_have_text("Live")


def next_refresh(page: Page) -> None:
    """Until the page refreshed once more (its 'Updated hh:mm:ss' moves on)."""
    shown = page.get_by_test_id("last-refresh").inner_text()
    expect(page.get_by_test_id("last-refresh")).not_to_have_text(shown)


def version_row(page: Page, name: str, version: str):
    return page.get_by_test_id(f"version-{name}-{version}")


def described(admin, cluster, name: str, version: str) -> dict:
    answer = admin.get(f"{cluster.url}/models/{name}/{version}")
    assert answer.status_code == 200, answer.text
    return answer.json()[0]




# ------------------------------------------------------------------------------ access
def test_without_the_token_the_page_is_a_login_form_and_shows_no_data(page, cluster, http):
    answer = page.goto(f"{cluster.url}/ui")
    assert answer.status == 401
    expect(page.get_by_test_id("login-form")).to_be_visible()
    expect(page.get_by_test_id("versions")).to_have_count(0)
    assert "iris" not in page.content()
    assert http.get(f"{cluster.url}/ui/state").status_code == 401
    assert page.request.get(f"{cluster.url}/ui/state").status == 401  # with whatever this browser holds

    page.get_by_test_id("token").fill("not-the-token")
    page.get_by_test_id("login").click()
    expect(page.get_by_test_id("login-message")).to_have_text("That is not the management token.")
    expect(page.get_by_test_id("versions")).to_have_count(0)
    assert page.request.get(f"{cluster.url}/ui/state").status == 401
    assert page.context.cookies() == []


def test_logging_in_with_the_token_shows_the_page(page, cluster):
    sign_in(page, cluster)
    expect(page.get_by_test_id("versions")).to_be_visible()
    expect(page.get_by_test_id("last-refresh")).to_have_text(re.compile(r"^Updated \d\d:\d\d:\d\d$"))
    session = [c for c in page.context.cookies() if c["name"] == "modelpool_session"]
    assert len(session) == 1 and session[0]["httpOnly"]
    assert "modelpool_session" not in page.evaluate("document.cookie")  # the page's script cannot read it


# ------------------------------------------------------------------------------ what it shows
def test_iris_with_its_replicas_per_node_and_its_traffic(page, cluster, admin, http):
    workers = [w for w in described(admin, cluster, "iris", "1")["workers"] if w["status"] == "READY"]
    assert workers, "iris 1 has no running replica"
    sign_in(page, cluster)
    row = version_row(page, "iris", "1")
    expect(row.get_by_test_id("status")).to_have_text("RUNNING")
    expect(row.get_by_test_id("replica-summary")).to_have_text(f"{len(workers)} RUNNING", timeout=LONG_MS)

    state = admin.get(f"{cluster.url}/ui/state").json()
    iris = next(v for m in state["models"] if m["name"] == "iris" for v in m["versions"] if v["version"] == "1")
    for node_id in {r["nodeId"] for r in iris["replicas"]}:
        node = next(n for n in state["nodes"] if n["nodeId"] == node_id)
        card = page.get_by_test_id(f"node-{node_id}")
        expect(card).to_contain_text(node["nodeIp"])
        expect(card.get_by_test_id("node-state")).to_have_text("alive")
        on_node = [r for r in iris["replicas"] if r["nodeId"] == node_id]
        placed = card.get_by_test_id("node-replica").filter(has_text=re.compile(r"^iris v1 "))
        expect(placed).to_have_count(len(on_node))
        expect(placed.get_by_test_id("replica-state")).to_have_text(["RUNNING"] * len(on_node))

    for _ in range(60):
        assert http.post(f"{cluster.url}/v2/models/iris/versions/1/infer", json=ROW).status_code == 200
    # the replicas report every second; the page shows the last minute
    expect(row.get_by_test_id("rps")).to_have_text(re.compile(r"^(?!0\.0$)\d+\.\d$"), timeout=LONG_MS)
    expect(row.get_by_test_id("p50")).to_have_text(re.compile(r"^\d+\.\d$"))
    expect(row.get_by_test_id("p99")).to_have_text(re.compile(r"^\d+\.\d$"))


def test_a_running_batch_jobs_bar_moves_to_the_end(page, cluster, admin, slow_model):
    sign_in(page, cluster)
    execution = start_slow_job(cluster, admin, partitions=10)
    job = page.get_by_test_id(f"batch-{execution}")
    bar = job.get_by_test_id("progress")
    expect(job.get_by_test_id("state")).to_have_text("running", timeout=LONG_MS)
    expect(bar).not_to_have_attribute("aria-valuenow", "0", timeout=LONG_MS)
    first = int(bar.get_attribute("aria-valuenow"))
    assert 0 < first < 100, f"the job went from 0 to {first}% between two refreshes: make it longer"
    expect(bar).not_to_have_attribute("aria-valuenow", str(first), timeout=LONG_MS)
    later = int(bar.get_attribute("aria-valuenow"))
    assert later > first
    if os.environ.get("MODELPOOL_UI_SCREENSHOT"):
        page.screenshot(path=os.environ["MODELPOOL_UI_SCREENSHOT"])
    expect(job.get_by_test_id("state")).to_have_text("complete", timeout=LONG_MS)
    expect(bar).to_have_attribute("aria-valuenow", "100")
    expect(job.get_by_test_id("rows")).to_have_text("10000 / 10000")
    expect(job.get_by_test_id("cancel")).to_have_count(0)
    assert admin.get(f"{cluster.url}/batches/{execution}").json()["state"] == "Complete"


# ------------------------------------------------------------------------------ actions
def scale_from_the_page(page: Page, name: str, version: str, low: int, high: int) -> None:
    version_row(page, name, version).get_by_test_id("scale").click()
    dialog = page.get_by_test_id("scale-dialog")
    dialog.get_by_test_id("scale-min").fill(str(low))
    dialog.get_by_test_id("scale-max").fill(str(high))
    dialog.get_by_test_id("scale-submit").click()
    expect(dialog).to_be_hidden()


def test_a_scale_from_the_page_takes_effect(page, cluster, admin):
    before = described(admin, cluster, "iris", "1")
    low, high = before["minWorkers"], before["maxWorkers"]
    new_low = low + 1
    new_high = max(high, new_low) + 1
    sign_in(page, cluster)
    row = version_row(page, "iris", "1")
    try:
        scale_from_the_page(page, "iris", "1", new_high, new_low)  # the wrong way round: refused, nothing changes
        expect(page.get_by_test_id("action-message")).to_have_text(re.compile(
            rf"^Refused: .*min_worker \({new_high}\).*max_worker \({new_low}\).* \(field: min_worker\)$"))
        assert (described(admin, cluster, "iris", "1")["minWorkers"]) == low

        scale_from_the_page(page, "iris", "1", new_low, new_high)
        assert page.dialogs.asked[-1] == f"Scale iris version 1 to {new_low}–{new_high} workers?"
        expect(page.get_by_test_id("action-message")).to_have_text("Processing worker updates...")
        now = described(admin, cluster, "iris", "1")
        assert (now["minWorkers"], now["maxWorkers"]) == (new_low, new_high)
        expect(row.get_by_test_id("workers")).to_have_text(f"{new_low}–{new_high}")
        expect(row.get_by_test_id("replica-summary")).to_have_text(f"{new_low} RUNNING", timeout=LONG_MS)
    finally:
        restored = admin.put(f"{cluster.url}/models/iris/1", params={"min_worker": low, "max_worker": high,
                                                                     "synchronous": "true"})
        assert restored.status_code == 200, restored.text
    expect(row.get_by_test_id("workers")).to_have_text(f"{low}–{high}")


def test_set_default_asks_for_confirmation_first(page, cluster, admin):
    registered = register_together(cluster, [{"url": f"iris-{v}.zip", "model_name": FLOWER, "initial_workers": 0,
                                              "synchronous": "true"} for v in ("1", "2")])  # either may be the default
    assert [r.status_code for r in registered] == [200, 200], [r.text for r in registered]
    try:
        default = next(d["modelVersion"] for d in admin.get(f"{cluster.url}/models/{FLOWER}/all").json()
                       if d["isDefault"])
        other = "1" if default == "2" else "2"
        sign_in(page, cluster)
        button = version_row(page, FLOWER, other).get_by_test_id("set-default")
        page.dialogs.accept = False
        button.click()
        assert page.dialogs.asked == [f"Make version {other} the default of {FLOWER}?"]
        next_refresh(page)
        expect(version_row(page, FLOWER, default).get_by_test_id("default")).to_be_visible()
        assert described(admin, cluster, FLOWER, default)["isDefault"]

        page.dialogs.accept = True
        button.click()
        expect(page.get_by_test_id("action-message")).to_have_text(
            f'Default version successfully updated for model "{FLOWER}" to "{other}"', timeout=LONG_MS)
        assert described(admin, cluster, FLOWER, other)["isDefault"]
        expect(version_row(page, FLOWER, other).get_by_test_id("default")).to_be_visible()
        expect(version_row(page, FLOWER, default).get_by_test_id("set-default")).to_be_visible()
    finally:
        admin.delete(f"{cluster.url}/models/{FLOWER}/1")
        admin.delete(f"{cluster.url}/models/{FLOWER}/2")


def test_cancel_asks_for_confirmation_first(page, cluster, admin, slow_model):
    sign_in(page, cluster)
    execution = start_slow_job(cluster, admin, partitions=20)
    url = f"{cluster.url}/batches/{execution}"
    try:
        job = page.get_by_test_id(f"batch-{execution}")
        page.dialogs.accept = False
        job.get_by_test_id("cancel").click()
        assert page.dialogs.asked == [f"Cancel batch job {execution}? Rows already scored are kept."]
        next_refresh(page)
        expect(job.get_by_test_id("state")).to_have_text(re.compile("^(pending|running)$"))
        assert admin.get(url).json()["state"] in ("Pending", "Running")

        page.dialogs.accept = True
        job.get_by_test_id("cancel").click()
        expect(job.get_by_test_id("state")).to_have_text("cancelled")
        expect(job.get_by_test_id("cancel")).to_have_count(0)
        assert admin.get(url).json()["state"] == "Cancelled"
    finally:
        admin.delete(url)  # harmless when already cancelled
