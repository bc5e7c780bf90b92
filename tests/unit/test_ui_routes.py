"""The status page's access and data over real HTTP, against the real management application (management_app.py):
the login form, the session cookie, the CSRF header on the page's actions, the bearer header unchanged, the static
files kept inside their folder, and ``GET /ui/state`` with a registered model, a running batch job and the board's
figures. The status board is a :class:`BoardState` in this process (no Ray)."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Optional

import pytest
import requests

from modelpool.deployments import latency_histogram
from modelpool.deployments.status_board import BoardState
from modelpool.management import api as management_api
from modelpool.management import ui_session
from modelpool.management.params import RegisterParams
from modelpool.management.status_sources import StatusSources
from tests.unit.management_app import (TOKEN, LocalRay, RunningManagement, gate_fixture,  # noqa: F401 (fixtures)
                                       management_fixture, model_store, serve_in_thread)

ROW = [5.1, 3.5, 1.4, 0.2]


class InProcessBoard:
    """The status board's reader, over a board in this process whose clock stands still (``now``)."""

    def __init__(self) -> None:
        self.now = time.time()
        self.state = BoardState(clock=lambda: self.now)

    def snapshot(self) -> Optional[dict]:
        return self.state.snapshot()

    def start(self) -> None:
        pass


@dataclass
class Served:
    """The management app alone on a port of its own (the fixture's ingress reads every body as JSON, and a login
    form is not), over the fixture's state: its manager, Serve in memory, batch jobs."""

    url: str
    port: int


@pytest.fixture()
def served(management: RunningManagement) -> Served:
    server, thread, port = serve_in_thread(management_api.api)
    try:
        yield Served(f"http://127.0.0.1:{port}", port)
    finally:
        server.should_exit = True
        thread.join(10)
        assert not thread.is_alive()


@pytest.fixture()
def board(management: RunningManagement, monkeypatch) -> InProcessBoard:
    board = InProcessBoard()
    monkeypatch.setattr(management_api.state, "status",
                        StatusSources(management.manager, board=board, nodes=LocalRay.nodes, ttl_s=0), raising=False)
    return board


@pytest.fixture()
def x_registered(management: RunningManagement) -> str:
    """Model ``x`` (the iris_report example) with one replica of its own."""
    management.manager.register(RegisterParams(url="iris_report-1.zip", model_name="x", initial_workers=1))
    return "x"


def logged_in(served: Served) -> requests.Session:
    session = requests.Session()
    answer = session.post(f"{served.url}/ui/login", data={"token": TOKEN}, allow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui"
    return session


def session_cookie(answer: requests.Response) -> SimpleCookie:
    cookie = SimpleCookie()
    cookie.load(answer.headers["set-cookie"])
    return cookie


# ------------------------------------------------------------------------------ logging in
def test_without_a_session_the_page_is_a_login_form_and_the_state_a_401(management, served, board):
    with requests.Session() as http:
        page = http.get(f"{served.url}/ui")
        assert page.status_code == 401 and page.headers["content-type"].startswith("text/html")
        assert '<form class="login" method="post" action="/ui/login"' in page.text and 'name="token"' in page.text
        assert http.get(f"{served.url}/ui/").status_code == 401  # the same page
        refused = http.get(f"{served.url}/ui/state")
        assert refused.status_code == 401 and refused.json()["field"] == "authorization"
        assert TOKEN not in refused.text and TOKEN not in page.text


def test_a_wrong_token_gets_the_form_again_with_a_message_and_no_cookie(management, served, board):
    with requests.Session() as http:
        answer = http.post(f"{served.url}/ui/login", data={"token": "guess<script>"}, allow_redirects=False)
        assert answer.status_code == 401 and "set-cookie" not in answer.headers
        assert "That is not the management token." in answer.text
        assert "guess" not in answer.text  # what was typed is never shown back
        assert http.post(f"{served.url}/ui/login", data={}).status_code == 401


def test_the_right_token_sets_an_httponly_strict_session_and_opens_the_page(management, served, board):
    with requests.Session() as http:
        answer = http.post(f"{served.url}/ui/login", data={"token": TOKEN}, allow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"] == "/ui"
        cookie = session_cookie(answer)[ui_session.SESSION_COOKIE]
        assert cookie["httponly"] and cookie["samesite"].lower() == "strict" and cookie["path"] == "/"
        assert int(cookie["max-age"]) == ui_session.SESSION_TTL_S
        assert TOKEN not in answer.headers["set-cookie"]
        page = http.get(f"{served.url}/ui")  # the cookie alone
        assert page.status_code == 200 and '<script type="module" src="/ui/static/app.js">' in page.text
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        state = http.get(f"{served.url}/ui/state")
        assert state.status_code == 200
        assert re.fullmatch(r"[0-9a-f]{64}", state.json()["csrfToken"])
        assert TOKEN not in state.text


def test_logout_clears_the_session(management, served, board):
    http = logged_in(served)
    answer = http.post(f"{served.url}/ui/logout", allow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui"
    assert session_cookie(answer)[ui_session.SESSION_COOKIE]["max-age"] == "0"
    assert http.get(f"{served.url}/ui/state").status_code == 401
    assert http.get(f"{served.url}/ui").status_code == 401


def test_an_expired_or_forged_session_is_refused(management, served, board):
    expired = ui_session.new_session(TOKEN, time.time() - ui_session.SESSION_TTL_S - 1)
    forged = ui_session.new_session("not-the-token", time.time())
    stretched = str(int(time.time()) + 10 * ui_session.SESSION_TTL_S) + "." + expired.split(".")[1]
    for value in (expired, forged, stretched, "", "123", "abc.def"):
        answer = requests.get(f"{served.url}/ui/state", cookies={ui_session.SESSION_COOKIE: value})
        assert answer.status_code == 401, value
        page = requests.get(f"{served.url}/ui", cookies={ui_session.SESSION_COOKIE: value})
        assert page.status_code == 401 and "login" in page.text
    assert "Your session has expired" in requests.get(f"{served.url}/ui",
                                                      cookies={ui_session.SESSION_COOKIE: expired}).text


def test_no_session_is_valid_without_a_management_token():
    """An HMAC keyed by "" is one anybody can compute."""
    assert not ui_session.session_valid(ui_session.new_session("", time.time()), "", time.time())


# ------------------------------------------------------------------------------ the page's actions
def test_a_cookie_authenticated_change_needs_the_csrf_header(management, served, board, x_registered):
    http = logged_in(served)
    csrf = http.get(f"{served.url}/ui/state").json()["csrfToken"]
    url = f"{served.url}/models/x/1"
    before = management.manager.registry.get_model("x", "1").max_workers
    refused = http.put(url, params={"min_worker": 1, "max_worker": 4})
    assert refused.status_code == 403 and refused.json()["field"] == ui_session.CSRF_HEADER
    wrong = http.put(url, params={"min_worker": 1, "max_worker": 4}, headers={ui_session.CSRF_HEADER: "0" * 64})
    assert wrong.status_code == 403
    assert management.manager.registry.get_model("x", "1").max_workers == before != 4  # nothing changed
    scaled = http.put(url, params={"min_worker": 1, "max_worker": 4}, headers={ui_session.CSRF_HEADER: csrf})
    assert scaled.status_code == 202, scaled.text
    assert management.manager.registry.get_model("x", "1").max_workers == 4
    version = http.get(f"{served.url}/ui/state").json()["models"][0]["versions"][0]
    assert (version["minWorkers"], version["maxWorkers"]) == (1, 4)
    # reading needs no CSRF header; another session's token is not this one's
    assert http.get(f"{served.url}/models/x").status_code == 200
    time.sleep(1.1)  # a later expiry: another cookie
    other = logged_in(served)
    assert other.put(url, params={"max_worker": 2}, headers={ui_session.CSRF_HEADER: csrf}).status_code == 403


def test_the_bearer_header_works_as_before_and_needs_no_csrf(management, served, board, x_registered):
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert requests.put(f"{served.url}/models/x/1", params={"max_worker": 2}, headers=bearer).status_code == 202
    state = requests.get(f"{served.url}/ui/state", headers=bearer)
    assert state.status_code == 200 and state.json()["csrfToken"] is None
    assert requests.get(f"{served.url}/ui", headers=bearer).status_code == 200
    wrong = {"Authorization": "Bearer nope"}
    assert requests.get(f"{served.url}/ui/state", headers=wrong).status_code == 401
    # a wrong header is not rescued by a valid cookie: the header is judged alone
    http = logged_in(served)
    assert http.get(f"{served.url}/ui/state", headers=wrong).status_code == 401


# ------------------------------------------------------------------------------ static files
def test_static_files_are_served_from_their_folder_only(management, served, board):
    css = requests.get(f"{served.url}/ui/static/style.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert requests.get(f"{served.url}/ui/static/app.js").headers["content-type"].startswith("text/javascript")
    for path in ("../ui_routes.py", "../../cluster/settings.py", "%2e%2e/ui_routes.py", "..%2fui_routes.py",
                 "%2fetc%2fpasswd", "/etc/passwd", "nothing.css", "", "..", "index.html%00.css"):
        answer = requests.get(f"{served.url}/ui/static/{path}")
        # 401: the client made '/ui/static/..' the login page's '/ui' before sending it
        assert answer.status_code == (401 if path == ".." else 404), (path, answer.status_code)
        assert "import" not in answer.text and "root:" not in answer.text


def test_raw_dot_dot_paths_do_not_leave_the_folder(management, served, board):
    """As a client that does not normalise paths would send them."""
    import http.client

    for path in ("/ui/static/../ui_routes.py", "/ui/static/../../pyproject.toml", "/ui/static/%2e%2e/api.py"):
        connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
        try:
            connection.request("GET", path)
            answer = connection.getresponse()
            body = answer.read()
            assert answer.status in (401, 404), (path, answer.status)
            assert b"import" not in body
        finally:
            connection.close()


# ------------------------------------------------------------------------------ the state
def test_the_state_shows_the_model_its_replica_a_running_job_and_the_boards_figures(management, served, board,
                                                                                    x_registered, gate):
    now = board.now
    for offset in range(10):
        board.state.push("local", [{"model": "x", "version": "1", "replica": "model:x:1-0", "second": int(now) - offset,
                                    "statuses": {200: 19, 500: 1},
                                    "histogram": latency_histogram.histogram([3.0] * 19 + [80.0]),
                                    "errors": [{"time": now, "status": 500, "message": "model 'x' failed: boom",
                                                "requestId": f"req-{offset}"}] if offset == 0 else []}])
    gate.hold()
    try:
        execution = requests.post(f"{served.url}/batches", headers={"Authorization": f"Bearer {TOKEN}"},
                                  json={"service": "x", "version": "1", "records": [ROW] * 6, "parallelCount": 2})
        assert execution.status_code == 202, execution.text
        execution_id = execution.json()["executionId"]
        http = logged_in(served)
        state = http.get(f"{served.url}/ui/state").json()
    finally:
        gate.release()
    model = next(m for m in state["models"] if m["name"] == "x")
    version = model["versions"][0]
    shown = (model["defaultVersion"], version["isDefault"], version["pool"], version["status"])
    assert shown == ("1", True, "dedicated", "RUNNING")
    assert version["replicas"] == [{"replicaId": "model:x:1-0", "nodeId": "local", "nodeIp": "127.0.0.1",
                                    "state": "RUNNING", "lastReport": pytest.approx(time.time(), abs=5)}]
    stats = version["stats"]
    assert stats["requests"] == 200 and stats["windowS"] == 1.0  # seen for a moment: averaged over that moment
    assert stats["requestsPerSecond"] == 200.0 and stats["errorsPerSecond"] == 10.0
    assert stats["p50Ms"] == pytest.approx(3.0, rel=0.2) and stats["p99Ms"] == pytest.approx(80.0, rel=0.2)
    placed = sum(len(d["replicas"]) for a in management.serve.details()["applications"].values()
                 for d in a["deployments"].values())  # x's, the generic pool's, the fronts'
    assert placed >= 2 and state["nodes"] == [{"nodeId": "local", "nodeIp": "127.0.0.1", "alive": True,
                                               "isHead": False, "replicas": placed}]
    job = next(b for b in state["batches"] if b["executionId"] == execution_id)
    assert (job["model"], job["version"]) == ("x", "1") and job["state"] in ("pending", "running")
    assert job["rowsTotal"] == 6 and 0.0 <= job["progress"] < 1.0
    assert state["errors"][0]["requestId"] == "req-0" and state["errors"][0]["replicaId"] == "model:x:1-0"
    assert state["statsAvailable"] is True and state["unavailable"] == []
    # the cancel the page sends: the existing route, with the cookie and the CSRF header
    cancelled = http.post(f"{served.url}/batches/{execution_id}/cancel",
                          headers={ui_session.CSRF_HEADER: state["csrfToken"]})
    assert cancelled.status_code == 200 and cancelled.json()["state"] in ("Cancelled", "Complete")
