# The project's commands. Every target installs first (quick when nothing changed).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The unit's commands: the package's console script.
NONTAX := $(VENV)/bin/nontax
# The harness (include/) and the DAG files; the package itself is installed (pip install -e .).
export PYTHONPATH := $(CURDIR)/include:$(CURDIR)/dags
export AIRFLOW_HOME ?= $(CURDIR)/.airflow
export NONTAX_PDF_ROOT ?= $(CURDIR)/.run/pdfs
# The order database for the tools, unless the environment names one.
export AIRFLOW_CONN_NONTAX_ORDERS_DB ?= postgresql://postgres@127.0.0.1:5432/nontax
WECHAT_SANDBOX_PORT ?= 8765
PYTEST_ARGS ?=
# make test: worker processes of pytest-xdist (0: the suite in one process, as plain pytest does);
# three on two cores: with two, 15% of the CPU stood idle while the stacks' Airflow waited.
TEST_WORKERS ?= 3
# make up: the executor (local or celery) and, on Celery, how many workers.
EXECUTOR ?= local
WORKERS ?= 2
# make up: where the tasks send their metrics (host:port of a StatsD server); empty: nowhere.
STATSD ?=
# make chaos: how many runs, and the seed their faults are drawn from.
RUNS ?= 200
SEED ?= 1

.PHONY: help install lint test sandbox migrate load-orders run-once status attention demo \
	history refuse void \
	constraints image-deps clean chaos up down bench

help:  ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)  ## create .venv, install the pinned dependencies and the package (editable)

constraints: $(STAMP)  ## re-pin the whole tree from the current install
	{ echo "# The whole dependency tree, pinned (make constraints regenerates it from a passing install)."; \
	  $(PY) -m pip freeze --exclude-editable | grep -v '^#'; } > constraints.txt

image-deps: $(STAMP)  ## check the Dockerfile's pip install resolves to the pins (CI runs it)
	$(PY) -m nontax_dev.image_deps

lint: $(STAMP)  ## ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint  ## the whole suite: unit, integration (Postgres, sandbox), end to end; TEST_WORKERS=3
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

migrate: $(STAMP)  ## apply the order schema migrations to AIRFLOW_CONN_NONTAX_ORDERS_DB
	$(NONTAX) migrate

# What a person types after ORDER=, REASON= and FILE= reaches the program as it is: make's
# $(value ...) leaves `$` alone and the environment keeps it from the shell (no `...` or $(...)
# run, no quote ends it); the program checks it and refuses what it cannot take, with the reason.
load-orders history refuse void: export NONTAX_FILE := $(value FILE)
load-orders history refuse void: export NONTAX_ORDER := $(value ORDER)
load-orders history refuse void: export NONTAX_REASON := $(value REASON)

load-orders: $(STAMP)  ## load orders from JSON Lines: make load-orders FILE=orders.jsonl
	@test -n "$$NONTAX_FILE" || { echo "usage: make load-orders FILE=orders.jsonl"; exit 2; }
	$(NONTAX) load -- "$$NONTAX_FILE"

run-once: $(STAMP)  ## run the DAG once (dag.test(), what airflow dags test runs) with the AIRFLOW_CONN_... Connections
	$(PY) -m nontax_dev.run_once

status: $(STAMP)  ## orders by status
	$(NONTAX) status

attention: $(STAMP)  ## the orders that need a person, with their reasons
	$(NONTAX) attention

.PHONY: withdraw
withdraw: $(STAMP)  ## withdraw a refusal or void that ended refused/failed: make withdraw REQUEST=..
	@test -n "$$REQUEST" || { echo "usage: make withdraw REQUEST=request_id [NOTE=...]"; exit 2; }
	$(NONTAX) withdraw "$$REQUEST" --note "$$NOTE"  # from the environment, as typed

history: $(STAMP)  ## an order's row, history and requests: make history ORDER=T00000001
	@test -n "$$NONTAX_ORDER" || { echo "usage: make history ORDER=order_id"; exit 2; }
	$(NONTAX) history -- "$$NONTAX_ORDER"

refuse: $(STAMP)  ## ask for an order to be refused: make refuse ORDER=.. REASON="shown to the payer"
	@test -n "$$NONTAX_ORDER" || { echo 'usage: make refuse ORDER=order_id REASON="..."'; exit 2; }
	$(NONTAX) refuse --reason="$$NONTAX_REASON" -- "$$NONTAX_ORDER"

void: $(STAMP)  ## ask for an order's issued bill to be voided: make void ORDER=.. REASON=".."
	@test -n "$$NONTAX_ORDER" || { echo 'usage: make void ORDER=order_id REASON="..."'; exit 2; }
	$(NONTAX) void --reason="$$NONTAX_REASON" -- "$$NONTAX_ORDER"

demo: $(STAMP)  ## the whole pipeline on 200 demo orders against the sandbox, in one go
	$(PY) -m nontax_dev.demo

chaos: $(STAMP)  ## RUNS runs under random WeChat faults, the promise checked: make chaos RUNS=200 SEED=1
	$(PY) -m nontax_dev.chaos --runs $(RUNS) --seed $(SEED)

sandbox: $(STAMP)  ## run the WeChat sandbox in the foreground on WECHAT_SANDBOX_PORT
	$(PY) -m wechat_sandbox --port $(WECHAT_SANDBOX_PORT)

bench: $(STAMP)  ## pipeline vs ceiling vs per-order DAG, Celery, CPU per order, costs, authorisation to bill, the receiver; BENCH_ARGS="--large 5000" AUTH_BENCH_ARGS="--minutes 3"
	$(PY) bench/run.py $(BENCH_ARGS)
	$(PY) bench/auth_to_bill.py $(AUTH_BENCH_ARGS)
	$(PY) bench/receiver.py $(RECEIVER_BENCH_ARGS)

up: $(STAMP)  ## the local Airflow in the background (UI :8080); make up EXECUTOR=celery WORKERS=2 STATSD=host:port
	WECHAT_SANDBOX_PORT=$(WECHAT_SANDBOX_PORT) NONTAX_STACK_EXECUTOR=$(EXECUTOR) \
		NONTAX_STACK_WORKERS=$(WORKERS) NONTAX_STACK_STATSD=$(STATSD) $(PY) -m nontax_dev.stack up

down:  ## stop everything `make up` started, and check that nothing is left
	@if test -x $(PY); then $(PY) -m nontax_dev.stack down; \
	else echo "no .venv: nothing was started"; fi

clean: down  ## stop the local stack, remove the venv and local state
	rm -rf $(VENV) .airflow .run artifacts .pytest_cache .ruff_cache
