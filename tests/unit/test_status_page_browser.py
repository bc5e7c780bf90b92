"""The status page in a real headless browser (Debian's chromium, tests/browser.py), against the real management app.

The app runs in process over real HTTP (management_app.py's real ModelManager, Serve kept in memory), served on a
port of its own: its routes, login form, session cookie, CSRF check and the page's real files. Only what
``GET /ui/state`` would read from Ray is stood in for: the status board is a :class:`BoardState` in this process,
the node list one local node. Batch jobs run on the real scheduler with in-process workers, held at ``gate`` while
a test needs one running.

Every check is what a user sees: text in the page, a dialog asked, the management API's record of a change.
"""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pytest
import requests
from playwright.sync_api import Page, expect

from modelpool.deployments import latency_histogram
from modelpool.management import api as management_api
from modelpool.management import ui_session
from modelpool.management.params import RegisterParams
from modelpool.management.status_sources import StatusSources
from tests.browser import browser_fixture, page_fixture  # noqa: F401 (fixtures)
from tests.unit import test_ui_routes
from tests.unit.management_app import (TOKEN, LocalRay, RunningManagement, gate_fixture,  # noqa: F401 (fixtures)
                                       management_fixture, model_store, serve_in_thread)

BEARER = {"Authorization": f"Bearer {TOKEN}"}
ROW = [5.1, 3.5, 1.4, 0.2]
#: The page polls every 1.5 s; a change must show within 2 s.
REFRESH_MS = 2_000
HOSTILE = '<img src=x onerror="window.injected = 1">'


class InProcessBoard(test_ui_routes.InProcessBoard):
    """The status board's reader over a board in this process (on a cluster: a Ray actor the replicas push to),
    with a way to make traffic. Its clock stands still (at ``now``), so the figures do not drift while a test reads."""

    def traffic(self, model: str, version: str, replica: str, ok: int, failed: int, error: str = "") -> None:
        """A replica that has reported for a minute: ten seconds of ``ok`` 200s and ``failed`` 500s a second (3 ms,
        and 80 ms for the failures), nothing in the fifty before."""
        now = self.now
        self.now = now - 60
        self.state.push("local", [{"model": model, "version": version, "replica": replica, "second": int(self.now),
                                   "statuses": {}}])  # a heartbeat, a minute ago
        self.now = now
        for offset in range(10):
            errors = [{"time": now, "status": 500, "message": error, "requestId": "req-1"}] if error and offset == 0 \
                else []
            self.state.push("local", [{"model": model, "version": version, "replica": replica,
                                       "second": int(now) - offset, "statuses": {200: ok, 500: failed},
                                       "histogram": latency_histogram.histogram([3.0] * ok + [80.0] * failed),
                                       "errors": errors}])


@pytest.fixture()
def board(management: RunningManagement, monkeypatch: pytest.MonkeyPatch) -> InProcessBoard:
    board = InProcessBoard()
    monkeypatch.setattr(management_api.state, "status",
                        StatusSources(management.manager, board=board, nodes=LocalRay.nodes, ttl_s=0), raising=False)
    return board


@dataclass
class Site:
    """The management app as the browser reaches it (its own port: the page, its files, login, the API)."""

    url: str
    management: RunningManagement

    @property
    def manager(self):
        return self.management.manager

    @property
    def batches(self):
        return self.management.batches


def beside_the_browser(function: Callable, *args: Any) -> Any:
    """Run ``function`` in a thread of its own: playwright's sync API keeps an event loop running in this one, and a
    model replica made here would take it for Serve's (and start its gRPC port on it)."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(function, *args).result()


def register(management: RunningManagement, archive: str, workers: int) -> None:
    beside_the_browser(management.manager.register, RegisterParams(url=archive, initial_workers=workers))


@pytest.fixture()
def iris(management: RunningManagement, board: InProcessBoard) -> Iterator[Site]:
    """iris 1 with a replica of its own (the default) and iris 2 in the generic pool, on the app's own port."""
    register(management, "iris-1.zip", 1)
    register(management, "iris-2.zip", 0)
    beside_the_browser(management.manager.set_default, "iris", "1")
    server, thread, port = serve_in_thread(management_api.api)
    try:
        yield Site(f"http://127.0.0.1:{port}", management)
    finally:
        server.should_exit = True
        thread.join(10)
        assert not thread.is_alive(), "the management app's server did not stop"


def sign_in(page: Page, site: Site) -> None:
    """Through the login form, as a user does; the page then refreshes itself."""
    page.goto(f"{site.url}/ui")
    page.get_by_test_id("token").fill(TOKEN)
    page.get_by_test_id("login").click()
    expect(page.get_by_test_id("refresh-status")).to_have_text("Live")


def api_state(site: Site) -> dict:
    return requests.get(f"{site.url}/ui/state", headers=BEARER, timeout=10).json()


def changes_sent(page: Page) -> list:
    """Every request but a GET the page sends from now on (``page.on("request")``)."""
    sent: list = []
    page.on("request", lambda request: sent.append(request) if request.method != "GET" else None)
    return sent


def next_refresh(page: Page) -> None:
    """Wait until the page refreshed once more (its 'Updated hh:mm:ss' moves on each second it refreshes)."""
    shown = page.get_by_test_id("last-refresh").inner_text()
    expect(page.get_by_test_id("last-refresh")).not_to_have_text(shown, timeout=REFRESH_MS + 1_500)


def version_row(page: Page, name: str, version: str):
    return page.get_by_test_id(f"version-{name}-{version}")


def start_held_job(site: Site, gate) -> str:
    """A batch job of iris 1 that stays running (its scoring waits at ``gate``) until the test lets it go."""
    gate.hold()
    started = requests.post(f"{site.url}/batches", headers=BEARER, timeout=10,
                            json={"service": "iris", "version": "1", "records": [ROW] * 6})
    assert started.status_code == 202, started.text
    gate.wait_until_held()
    return started.json()["executionId"]


# ------------------------------------------------------------------------------ what it shows
def test_every_section_shows_the_state(page, iris, board, gate):
    board.traffic("iris", "1", "model:iris:1-0", ok=19, failed=1, error=HOSTILE)
    register(iris.management, "diabetes-1.zip", 0)
    pooled = requests.put(f"{iris.url}/pools/diabetes/1", headers=BEARER, timeout=10,
                          params={"initial_pool_size": 1, "max_pool_size": 2})
    assert pooled.status_code == 200, pooled.text
    graph = requests.put(f"{iris.url}/graphs/chain", headers=BEARER, timeout=30,
                         json={"graph": {"name": "only", "model": "iris", "version": "1"}})
    assert graph.status_code in (200, 201), graph.text
    execution = start_held_job(iris, gate)
    try:
        sign_in(page, iris)
        stats = next(v for m in api_state(iris)["models"] if m["name"] == "iris"
                     for v in m["versions"] if v["version"] == "1")["stats"]

        first = version_row(page, "iris", "1")
        expect(first.get_by_test_id("default")).to_have_text("default")
        expect(first.get_by_test_id("pool")).to_have_text("dedicated")
        expect(first.get_by_test_id("workers")).to_have_text("1–2")
        expect(first.get_by_test_id("replica-summary")).to_have_text("1 RUNNING")
        expect(first.get_by_test_id("rps")).to_have_text("3.3")  # 200 requests in the last minute
        expect(first.get_by_test_id("errors-per-second")).to_have_text("0.17")  # 10 of them 500s
        assert stats["p50Ms"] == pytest.approx(3.0, rel=0.2) and stats["p99Ms"] == pytest.approx(80.0, rel=0.2)
        expect(first.get_by_test_id("p50")).to_have_text(f"{stats['p50Ms']:.1f}")
        expect(first.get_by_test_id("p99")).to_have_text(f"{stats['p99Ms']:.1f}")
        expect(first.get_by_test_id("set-default")).to_have_count(0)  # it is the default already
        second = version_row(page, "iris", "2")
        expect(second.get_by_test_id("default")).to_have_count(0)
        expect(second.get_by_test_id("pool")).to_have_text("generic")
        expect(second.get_by_test_id("rps")).to_have_text("0.0")
        expect(second.get_by_test_id("p50")).to_have_text("—")  # no traffic: no latency
        expect(second.get_by_test_id("set-default")).to_be_visible()
        expect(version_row(page, "diabetes", "1").get_by_test_id("pool")).to_have_text("pool")

        node = page.get_by_test_id("node-local")
        expect(node).to_contain_text("127.0.0.1")
        expect(node.get_by_test_id("node-state")).to_have_text("alive")
        iris_replica = node.get_by_test_id("node-replica").filter(has_text="iris v1")
        expect(iris_replica.get_by_test_id("replica-state")).to_have_text("RUNNING")

        job = page.get_by_test_id(f"batch-{execution}")
        expect(job.get_by_test_id("state")).to_have_text(re.compile("^(pending|running)$"))
        expect(job.get_by_test_id("progress")).to_have_attribute("aria-valuenow", "0")
        expect(job.get_by_test_id("progress").locator("span")).to_have_attribute("style", "width: 0%;")
        expect(job.get_by_test_id("rows")).to_have_text("0 / 6")
        expect(job.get_by_test_id("cancel")).to_be_visible()

        expect(page.get_by_test_id("pool-diabetes-1").locator("th, td")).to_have_text(
            ["diabetes", "1", "1", "2", "RUNNING"])
        expect(page.get_by_test_id("graph-chain").locator("th, td").nth(2)).to_have_text("only")

        error = page.get_by_test_id("error").first
        expect(error.get_by_test_id("error-message")).to_have_text(HOSTILE)  # shown as text, never as markup
        expect(error).to_contain_text("iris v1")
        assert page.locator("main img").count() == 0 and page.evaluate("window.injected") is None
        expect(page.get_by_test_id("unavailable")).to_be_hidden()
        expect(page.get_by_test_id("refresh-status")).to_have_text("Live")
        expect(page.get_by_test_id("last-refresh")).to_have_text(re.compile(r"^Updated \d\d:\d\d:\d\d$"))
    finally:
        gate.release()


def test_the_page_shows_a_change_within_two_seconds(page, iris, board, gate):
    sign_in(page, iris)
    row = version_row(page, "iris", "1")
    expect(row.get_by_test_id("workers")).to_have_text("1–2")
    scaled = requests.put(f"{iris.url}/models/iris/1", headers=BEARER, params={"max_worker": 4}, timeout=10)
    assert scaled.status_code == 202, scaled.text
    expect(row.get_by_test_id("workers")).to_have_text("1–4", timeout=REFRESH_MS)
    board.traffic("iris", "2", "pool-0", ok=5, failed=0)
    expect(version_row(page, "iris", "2").get_by_test_id("rps")).not_to_have_text("0.0", timeout=REFRESH_MS)
    execution = start_held_job(iris, gate)
    try:
        expect(page.get_by_test_id(f"batch-{execution}")).to_be_visible(timeout=REFRESH_MS)
    finally:
        gate.release()
    bar = page.get_by_test_id(f"batch-{execution}").get_by_test_id("progress")
    expect(bar).to_have_attribute("aria-valuenow", "100", timeout=10_000)  # scored once let go
    expect(bar.locator("span")).to_have_attribute("style", "width: 100%;")  # the bar's filled part
    expect(page.get_by_test_id(f"batch-{execution}").get_by_test_id("state")).to_have_text("complete")
    expect(page.get_by_test_id(f"batch-{execution}").get_by_test_id("cancel")).to_have_count(0)


def test_a_failing_refresh_is_shown_and_an_ended_session_links_to_the_login(page, iris):
    sign_in(page, iris)
    # the ingress answers as HAProxy does with no management replica behind it
    page.route("**/ui/state", lambda route: route.fulfill(status=503, content_type="text/html",
                                                          body="<html><body>No server is available</body></html>"))
    status = page.get_by_test_id("refresh-status")
    expect(status).to_have_text("Refresh failed: HTTP 503 Service Unavailable", timeout=REFRESH_MS)
    expect(page.locator("body")).to_have_class("stale")
    page.unroute("**/ui/state")
    expect(status).to_have_text("Live", timeout=REFRESH_MS)
    expect(page.locator("body")).not_to_have_class("stale")

    page.context.clear_cookies()  # the session ends (expired, logged out in another tab)
    expect(status).to_contain_text("Session expired.", timeout=REFRESH_MS)
    page.get_by_test_id("login-link").click()
    expect(page.get_by_test_id("login-form")).to_be_visible()
    expect(page.get_by_test_id("versions")).to_have_count(0)


def test_log_out_ends_the_session(page, iris):
    sign_in(page, iris)
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_test_id("login-form")).to_be_visible()
    assert page.request.get(f"{iris.url}/ui/state").status == 401


# ------------------------------------------------------------------------------ actions
def csrf_of(page: Page) -> str:
    """The CSRF token of this browser's session, as ``GET /ui/state`` hands it to the page."""
    session = next(c["value"] for c in page.context.cookies() if c["name"] == ui_session.SESSION_COOKIE)
    return ui_session.csrf_token(session, TOKEN)


def scale_from_the_page(page: Page, name: str, version: str, low: int, high: int) -> None:
    version_row(page, name, version).get_by_test_id("scale").click()
    dialog = page.get_by_test_id("scale-dialog")
    expect(dialog).to_be_visible()
    dialog.get_by_test_id("scale-min").fill(str(low))
    dialog.get_by_test_id("scale-max").fill(str(high))
    dialog.get_by_test_id("scale-submit").click()
    expect(dialog).to_be_hidden()


def test_scale_asks_first_sends_the_csrf_header_and_takes_effect(page, iris):
    sign_in(page, iris)
    sent = changes_sent(page)
    page.dialogs.accept = False
    scale_from_the_page(page, "iris", "1", 2, 3)
    assert page.dialogs.asked == ["Scale iris version 1 to 2–3 workers?"]
    next_refresh(page)
    assert sent == [], "a dismissed confirmation sent a request"
    record = iris.manager.registry.get_model("iris", "1")
    assert (record.min_workers, record.max_workers) == (1, 2)

    page.dialogs.accept = True
    scale_from_the_page(page, "iris", "1", 2, 3)
    expect(page.get_by_test_id("action-message")).to_have_text("Processing worker updates...")
    assert [(r.method, r.url.removeprefix(iris.url)) for r in sent] == [
        ("PUT", "/models/iris/1?min_worker=2&max_worker=3")]
    assert sent[0].headers[ui_session.CSRF_HEADER] == csrf_of(page)
    record = iris.manager.registry.get_model("iris", "1")
    assert (record.min_workers, record.max_workers) == (2, 3)
    row = version_row(page, "iris", "1")
    expect(row.get_by_test_id("workers")).to_have_text("2–3")
    expect(row.get_by_test_id("replica-summary")).to_have_text("2 RUNNING")


def test_a_refused_action_shows_the_apis_message(page, iris):
    refused = requests.put(f"{iris.url}/models/iris/1", headers=BEARER, params={"min_worker": 3, "max_worker": 2},
                           timeout=10)
    assert refused.status_code == 400 and refused.json()["field"] == "min_worker"
    sign_in(page, iris)
    scale_from_the_page(page, "iris", "1", 3, 2)
    message = page.get_by_test_id("action-message")
    expect(message).to_have_text(f"Refused: {refused.json()['error']} (field: min_worker)")
    expect(message).to_have_class(re.compile(r"\berror\b"))
    record = iris.manager.registry.get_model("iris", "1")
    assert (record.min_workers, record.max_workers) == (1, 2)


def test_set_default_asks_first(page, iris):
    sign_in(page, iris)
    sent = changes_sent(page)
    second = version_row(page, "iris", "2")
    page.dialogs.accept = False
    second.get_by_test_id("set-default").click()
    assert page.dialogs.asked == ["Make version 2 the default of iris?"]
    next_refresh(page)
    assert sent == [] and iris.manager.registry.default_records(["iris"])[0].version == "1"

    page.dialogs.accept = True
    second.get_by_test_id("set-default").click()
    expect(page.get_by_test_id("action-message")).to_have_text(
        'Default version successfully updated for model "iris" to "2"')
    assert [(r.method, r.url.removeprefix(iris.url)) for r in sent] == [("PUT", "/models/iris/2/set-default")]
    assert sent[0].headers[ui_session.CSRF_HEADER] == csrf_of(page)
    assert iris.manager.registry.default_records(["iris"])[0].version == "2"
    expect(second.get_by_test_id("default")).to_be_visible()
    expect(version_row(page, "iris", "1").get_by_test_id("set-default")).to_be_visible()


def test_cancel_asks_first(page, iris, gate):
    execution = start_held_job(iris, gate)
    try:
        sign_in(page, iris)
        sent = changes_sent(page)
        job = page.get_by_test_id(f"batch-{execution}")
        page.dialogs.accept = False
        job.get_by_test_id("cancel").click()
        assert page.dialogs.asked == [f"Cancel batch job {execution}? Rows already scored are kept."]
        next_refresh(page)
        assert sent == [] and iris.batches.state(execution, False)["state"] == "Running"
        expect(job.get_by_test_id("state")).to_have_text("running")

        page.dialogs.accept = True
        job.get_by_test_id("cancel").click()
        expect(job.get_by_test_id("state")).to_have_text("cancelled")
        assert [(r.method, r.url.removeprefix(iris.url)) for r in sent] == [("POST", f"/batches/{execution}/cancel")]
        assert sent[0].headers[ui_session.CSRF_HEADER] == csrf_of(page)
        assert iris.batches.state(execution, False)["state"] == "Cancelled"
        expect(job.get_by_test_id("cancel")).to_have_count(0)
    finally:
        gate.release()
