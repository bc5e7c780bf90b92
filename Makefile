# The two commands a fresh clone needs: `make start` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install start stop status test unit bench bench-graph bench-tracing bench-overload bench-front-shedding bench-management-race loadtest soak clean

$(BIN)/.installed: pyproject.toml cluster/version.py  # the version is read from cluster/version.py at install
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The folders import as modelpool.cluster, ...: setuptools maps them with an import finder and says so in
	# an "Editable installation" notice at every editable install; that notice alone is silenced.
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(BIN)/.installed

start: install ## install, then start a local cluster serving the example models on 127.0.0.1:8000
	$(BIN)/modelpool start

stop:
	$(BIN)/modelpool stop

status:
	$(BIN)/modelpool status

test: install ## install with the test extras, then run the whole suite (unit + real local Ray + ray up over SSH)
	bash tests/ensure_system_packages.sh
	$(BIN)/python -m tests.run_suite

unit: install
	$(BIN)/pytest -q tests/unit

bench: install ## serving benchmark: modelpool vs hand-tuned Ray Serve, FastAPI and a lean ceiling (needs wrk)
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m loadtests.bench_serving

bench-graph: install ## graph benchmark: transformer -> iris -> transformer against iris alone, c=1 and c=64 (needs wrk)
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m loadtests.bench_graph

bench-tracing: install ## tracing off vs the build without it, tracing at 1% vs off, the status page open vs not; c=64 (needs wrk, chromium; ~20 min)
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m loadtests.bench_tracing

bench-overload: install ## overload: 4x the saturating concurrency against saturation, refusals, recovery (needs wrk; ~6 min)
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m loadtests.bench_overload

bench-front-shedding: install ## the front's load shedding alone: accepted p99 at 1x, 4x and 8x a replica's limit (needs wrk; no Ray; ~20 s)
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m loadtests.bench_front_shedding

bench-management-race: install ## 16 clients over 2 management replicas register and scale the same names for 2 min: lost updates, double registrations (~4 min)
	$(BIN)/python -m loadtests.bench_management_race

loadtest: install ## locust load test (inference, management, batch) on a throwaway local cluster; reports under results/
	$(BIN)/python -m loadtests.run_load_test

soak: install ## soak run: 10 min of mixed load with scaling, batch jobs and SIGKILLed replicas on a throwaway cluster; leaks and failures judged, report under results/ (DURATION=60s for a short one)
	$(BIN)/python -m loadtests.soak --duration $(or $(DURATION),10m)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
