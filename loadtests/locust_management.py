"""Locust load test: the management API as operators and CI use it, mostly reads, some writes.

    MODELPOOL_TOKEN=... locust -f loadtests/locust_management.py --headless -u 2 -r 2 -t 60s \
        --stop-timeout 30 --host http://127.0.0.1:8000 --csv results/management

Each user registers one model of its own at start (``load_<run><user>_<n>``, from an archive already
in the model store, ``initial_workers=1``, ``synchronous=false``), describes, lists and scales it once
(so that even a short run exercises every call), and then mixes, by weight: describe
and list (with pagination) dominate, scale its own model (``min_worker=1``, ``max_worker`` 1 or 2, so
no replica is added: a 2-CPU machine has none to spare), and now and then unregister it, check that
describing it answers 404, and register the next one. A user never holds more than one extra model,
and ``on_stop`` unregisters it and checks the 404, so the cluster is left as it was found (a final
sweep at test stop unregisters anything of this run a killed user left behind, and reports it as a
failure).

Every 5xx and every unexpected status is a failure; the only 4xx counted as success is the 404 for a
model this same user has just unregistered.

Environment: MODELPOOL_TOKEN (else MODELPOOL_MANAGEMENT_TOKEN, else ``$MODELPOOL_HOME/management_token``,
home ``~/.modelpool`` by default); MODELPOOL_LOCUST_ARCHIVE (``iris-1.zip``: an archive in the cluster's
model store); MODELPOOL_LOCUST_WAIT_S (1.0: the most a user waits between tasks); MODELPOOL_LOCUST_PAGE
(2: ``limit`` of the list pages, small so that paging is exercised).

Give ``--stop-timeout``: a user then finishes its task before stopping, rather than being killed in
the middle of a registration (which ``on_stop`` handles, but slowly).
"""
from __future__ import annotations

import itertools
import logging
import os
import random
import time
import uuid
from typing import Any, Callable, Optional
from urllib.parse import urlencode

import gevent
import locust.stats
import requests
from locust import FastHttpUser, between, events, task
from locust.env import Environment

from modelpool.client import resolve_token

TOKEN = resolve_token(os.environ.get("MODELPOOL_TOKEN"))
if not TOKEN:
    raise SystemExit("no management token: set MODELPOOL_TOKEN, or MODELPOOL_HOME to the home whose "
                     "management_token `modelpool start` wrote (default ~/.modelpool)")
ARCHIVE = os.environ.get("MODELPOOL_LOCUST_ARCHIVE", "iris-1.zip")
WAIT_S = float(os.environ.get("MODELPOOL_LOCUST_WAIT_S", "1.0"))
PAGE = int(os.environ.get("MODELPOOL_LOCUST_PAGE", "2"))
MAX_PAGES = 50           # a list walk is bounded even if paging never ends
WHOLE_LIST = 1000        # the largest page the server gives: the whole registry of a load test in one answer
READ_MODELS = ("iris", "diabetes", "iris_report")  # the examples; describing them needs no model of our own
INTERRUPTED_REGISTER_WAIT_S = 15.0

RUN = uuid.uuid4().hex[:6]   # one per locust process: concurrent runs never touch each other's models
PREFIX = f"load_{RUN}"
_user_numbers = itertools.count()
logger = logging.getLogger(__name__)

REGISTER = "/models [register]"
UNREGISTER = "/models/{name} [unregister]"
DESCRIBE = "/models/{name} [describe]"
DESCRIBE_GONE = "/models/{name} [describe unregistered: 404]"
SCALE = "/models/{name} [scale]"
LIST_FIRST = "/models?limit [list]"
LIST_NEXT = "/models?next_page_token [list next page]"
REQUEST_NAMES = (REGISTER, UNREGISTER, DESCRIBE, DESCRIBE_GONE, SCALE, LIST_FIRST, LIST_NEXT)

# locust starts its --run-time timer on gevent's cached clock, which a CPU-bound import (the client module above)
# leaves stale: refresh it, or every run is shorter than -t by the import time.
gevent.get_hub().loop.update_now()


def _problem_of(response: Any, statuses: tuple[int, ...], check: Optional[Callable[[Any], Optional[str]]]) -> Optional[str]:
    """Why an answer is wrong (an unexpected status, or what ``check`` finds in its JSON body), or None."""
    if response.status_code not in statuses:
        return f"HTTP {response.status_code} (expected {'/'.join(map(str, statuses))}): {(response.text or '')[:200]}"
    if check is None:
        return None
    try:
        return check(response.json())
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        return f"unreadable answer ({exc!r}): {(response.text or '')[:200]}"


class ManagementUser(FastHttpUser):
    wait_time = between(0, WAIT_S)
    default_headers = {"Authorization": f"Bearer {TOKEN}"}

    def on_start(self) -> None:
        self.user_id = f"{PREFIX}u{next(_user_numbers)}"
        self.models_made = itertools.count()
        self.model: Optional[str] = None       # this user's extra model, once the server has it
        self.pending: Optional[str] = None     # a registration sent but not answered yet
        self.max_worker: Optional[int] = None   # the last max_worker this user set (register's depends on the cluster)
        self._register()
        # one of each read and write before the weighted mix: a short run still exercises every call
        self.describe()
        self.list_models()
        self.scale()

    def on_stop(self) -> None:
        if self.pending:
            self._unregister_interrupted(self.pending)
        elif self.model:
            self._unregister_and_check()

    # ------------------------------------------------------------------ tasks
    @task(8)
    def describe(self) -> None:
        if self.model:
            name, expected_max = self.model, self.max_worker
        else:
            name, expected_max = random.choice(READ_MODELS), None

        def check(body: Any) -> Optional[str]:
            if body[0]["modelName"] != name:
                return f"described {body[0]['modelName']!r}, asked for {name!r}"
            if expected_max is not None and body[0]["maxWorkers"] != expected_max:
                return f"maxWorkers {body[0]['maxWorkers']} after scaling to {expected_max}"
            return None

        self._call("GET", f"/models/{name}", DESCRIBE, (200,), check)

    @task(8)
    def list_models(self) -> None:
        """Walk every page; the user's own model must be on one of them."""
        seen: list[str] = []
        token: Optional[str] = None
        for page in range(MAX_PAGES):
            params = f"limit={PAGE}" + (f"&next_page_token={token}" if token else "")
            body = self._call("GET", f"/models?{params}", LIST_NEXT if token else LIST_FIRST, (200,),
                              lambda b: None if len(b["models"]) <= PAGE else f"{len(b['models'])} models on a page of {PAGE}")
            if body is None:
                return
            seen += [m["modelName"] for m in body["models"]]
            token = body.get("nextPageToken")
            if not token:
                break
        if self.model and not token and self.model not in seen and not self._listed_whole(self.model):
            self._fail(LIST_FIRST, f"{self.model} is registered but missing from the {page + 1} list pages "
                                   "and from a one-page list")

    @task(3)
    def scale(self) -> None:
        if not self.model:
            return
        wanted = 2 if self.max_worker == 1 else 1
        if self._call("PUT", f"/models/{self.model}?min_worker=1&max_worker={wanted}&synchronous=false",
                      SCALE, (202,)) is not None:
            self.max_worker = wanted

    @task(1)
    def recycle(self) -> None:
        """Unregister this user's model, check it is gone, register the next: one extra model at most."""
        if self.model:
            self._unregister_and_check()
        if not self.model:  # still set only when the unregister failed: never hold two
            self._register()

    # ------------------------------------------------------------------ steps
    def _register(self) -> None:
        name = f"{self.user_id}_{next(self.models_made)}"
        self.pending = name
        query = urlencode({"url": ARCHIVE, "model_name": name, "initial_workers": 1, "synchronous": "false"})
        body = self._call("POST", f"/models?{query}", REGISTER, (200, 202))
        self.pending = None
        if body is not None:
            self.model, self.max_worker = name, None

    def _unregister_and_check(self) -> None:
        name = self.model
        if self._call("DELETE", f"/models/{name}", UNREGISTER, (200,)) is not None:
            self.model = None
            self._call("GET", f"/models/{name}", DESCRIBE_GONE, (404,),
                       lambda b: None if b.get("field") == "model_name" else f"404 names field {b.get('field')!r}")

    def _unregister_interrupted(self, name: str) -> None:
        """The user was killed mid-registration: the model may land any moment, or never; wait a bounded time."""
        deadline = time.monotonic() + INTERRUPTED_REGISTER_WAIT_S
        while time.monotonic() < deadline:
            with self.client.request("DELETE", f"/models/{name}", name=UNREGISTER, catch_response=True) as response:
                if response.status_code == 200:
                    return
                if response.status_code == 404:
                    response.success()  # expected while the registration has not landed (or never will)
                else:
                    response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
            gevent.sleep(1.0)
        logger.info("registration of %s was interrupted and never landed", name)

    def _call(self, method: str, path: str, name: str, statuses: tuple[int, ...],
              check: Optional[Callable[[Any], Optional[str]]] = None) -> Optional[Any]:
        """One recorded request; its JSON body when the answer is right, else None (and a failure)."""
        with self.client.request(method, path, name=name, catch_response=True) as response:
            problem = _problem_of(response, statuses, check)
            if problem:
                response.failure(problem)
                return None
            response.success()  # the expected status, 4xx included: locust would count a 404 as failed
            try:
                return response.json()
            except ValueError:
                return {}

    def _listed_whole(self, name: str) -> bool:
        """True when one page as long as the registry lists ``name``. A page walk is no snapshot: tokens are
        positions (TorchServe's), so another user's unregister on an earlier page moves the rest up by one and the
        walk can step over a name (seen once in make test). One page cannot."""
        body = self._call("GET", f"/models?limit={WHOLE_LIST}", LIST_FIRST, (200,))
        return body is not None and name in [m["modelName"] for m in body["models"]]

    def _fail(self, name: str, message: str) -> None:
        self.environment.events.request.fire(request_type="CHECK", name=name, response_time=0, response_length=0,
                                             exception=AssertionError(message), context={})


@events.test_stop.add_listener
def _sweep(environment: Environment, **_: Any) -> None:
    """Unregister any model of this run still registered (a user killed before its on_stop), as a failure."""
    if not environment.host:
        return
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        names, token = [], None
        for _page in range(MAX_PAGES):
            answer = requests.get(f"{environment.host}/models", params={"limit": 1000, "next_page_token": token},
                                  headers=headers, timeout=30)
            answer.raise_for_status()
            names += [m["modelName"] for m in answer.json()["models"]]
            token = answer.json().get("nextPageToken")
            if not token:
                break
        left = [n for n in names if n.startswith(PREFIX)]
        for name in left:
            requests.delete(f"{environment.host}/models/{name}", headers=headers, timeout=60)
    except requests.RequestException as exc:
        left = [f"(could not check: {exc})"]
    if left:
        environment.events.request.fire(request_type="CHECK", name="models left registered at stop", response_time=0,
                                        response_length=0, exception=AssertionError(", ".join(left)), context={})


@events.quitting.add_listener
def _let_csv_catch_up(**_: Any) -> None:
    """locust rewrites its CSVs once a second and not at exit (locustio/locust#1806): without one more
    second, the last requests (on_stop's cleanup and the sweep's verdict) would be missing from them."""
    gevent.sleep(locust.stats.CSV_STATS_INTERVAL_SEC + 0.25)
