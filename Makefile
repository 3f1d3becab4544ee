# cem-pipeline. `make help` lists the targets. Each target does its own set-up.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STACK := scripts/stack.sh

.PHONY: help setup stack-install up down status demo test test-fuzz test-faults test-scaleout test-cluster bench bench-quick bench-scale bench-clean bench-collector bench-latency test-unit test-integration lint typecheck check clean wipe

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed ## create .venv with cem and the dev tools (installs `.venv/bin/cem`)

stack-install: setup ## install Kafka (Maven Central jars) and ClickHouse (apt)
	$(STACK) install

up: setup ## start Kafka and ClickHouse on 127.0.0.1 (safe to run twice)
	$(STACK) up

down: ## stop Kafka and ClickHouse
	$(STACK) down

status: ## show what runs where
	$(STACK) status

demo: up ## run the main job end to end: story + generated workload -> summary
	$(BIN)/cem demo

test: setup check ## lint, type-check, unit and integration tests (starts its own stack)
	$(BIN)/pytest tests -m "not faults and not cluster"

test-fuzz: setup ## 10,000 malformed messages among valid ones: all in the DLQ with reasons, no restart (CI)
	$(BIN)/pytest tests/integration/test_fuzz_deadletter.py -m faults -s

test-faults: setup ## fault injection: SIGKILL before and after snapshots and at 15 moments of one run (once with the disk lost), SIGKILL with the disk kept and lost, a partition moved and back, SIGKILL between the disk and the commit on a quiet stream, SIGTERM, broker restart, ClickHouse outage (about 11 min)
	$(BIN)/pytest tests/integration/test_faults.py tests/integration/test_kill_anywhere.py tests/integration/test_state_on_disk.py -m "faults and not scaleout" -s

test-scaleout: setup ## two workers on 8 partitions: one killed mid-stream; one killed at 13 moments while the other runs (about 4 min)
	$(BIN)/pytest tests/integration/test_faults.py tests/integration/test_kill_anywhere.py -m scaleout -s

test-cluster: setup ## cem on a ClickHouse cluster: ZooKeeper + 2 shards, one with 2 replicas (3 servers), outages (about 3 min)
	scripts/cluster.sh install
	$(BIN)/pytest tests/integration/test_cluster.py -m cluster -s

bench: up ## the benchmark: 1M touchpoints, ceiling vs baseline vs cem-pipeline (10-15 minutes)
	$(BIN)/python -m bench.run

bench-quick: up ## the benchmark at 55k touchpoints (about a minute), for everyday use
	$(BIN)/python -m bench.run --quick

bench-scale: up ## the state as customers grow, 100k -> 1M -> 3M in one run: RSS, disk, touchpoints/s, recovery after SIGKILL (an hour or more)
	$(BIN)/python -m bench.scale $(if $(STEPS),--steps $(STEPS))

bench-latency: up ## event -> alert latency of two forms in turns on one deployment: B_ROOT=<another checkout> and/or B_ENV="CEM_...=value", RATE=<touchpoints/s> (about 15 minutes)
	$(BIN)/python -m bench.latency $(if $(B_ROOT),--b-root $(B_ROOT)) $(foreach e,$(B_ENV),--b-env $(e)) $(if $(ORDER),--order $(ORDER)) $(if $(RATE),--rate $(RATE))

bench-clean: ## remove what earlier benchmark runs left on the local stack (topics, databases, worker data; not logs)
	$(BIN)/python -m bench.cleanup

bench-collector: up ## the collector: events/s on one core (batches of 100, acks=all), p99 ack latency at half that rate
	$(BIN)/python -m bench.collector

test-unit: setup ## pure tests only: no services
	$(BIN)/pytest tests/unit

test-integration: setup stack-install ## real Kafka + ClickHouse tests (their own ports)
	$(BIN)/pytest tests/integration -m "not faults and not cluster"

lint: setup ## ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup ## mypy --strict
	$(BIN)/mypy pipeline schemas processors sinks bench

check: lint typecheck ## lint + type-check

clean: ## remove caches (keeps .venv and .local)
	rm -rf .mypy_cache .ruff_cache .pytest_cache .hypothesis build *.egg-info

wipe: down ## stop the stack and delete its data (and the local worker's state, which belongs to it)
	$(STACK) wipe
	rm -rf .local/worker
