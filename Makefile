# jwtwatch — `make demo` and `make test` set everything up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: install demo test lint typecheck audit format bench model clean

# The editable install compiles the hot path with Cython beside the sources (the build backend's hook,
# scripts/hatch_build.py); scripts/build-accel compiles it again after an edit (a no-op when current). Without a
# C compiler jwtwatch still runs, as pure Python: slower (by how much: docs/performance.md, issue 16's table).
install: $(STAMP)
	@$(BIN)/python scripts/build-accel || echo "make: the compiled hot path was not built; jwtwatch runs as pure Python" >&2

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "jwtwatch needs Python >= 3.11"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

# The whole loop on the embedded default, with a report under data/demo/report (DEMO_ARGS="--minutes 4" ...).
demo: install
	$(BIN)/jwtwatch demo $(DEMO_ARGS)

# Starts a real Kafka broker (scripts/kafka-local) for the tests marked `kafka`, and stops it after.
test: install
	scripts/run-tests

# What lint checks is what format fixes; then the types (.pre-commit-config.yaml runs the same three).
LINT_PATHS := pipeline tests bench scripts/build-accel scripts/audit scripts/accel_build.py scripts/hatch_build.py

lint: install
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy

# mypy, strict, on what [tool.mypy] in pyproject.toml names (pipeline/, bench/, scripts/audit).
typecheck: install
	$(BIN)/mypy

# bandit on pipeline/ (nothing of medium or high severity) and pip-audit on the installed dependencies (no known
# vulnerability). Without a reachable vulnerability service pip-audit proves nothing and passes saying so —
# unless JWTWATCH_REQUIRE_AUDIT=1.
audit: install
	$(BIN)/python scripts/audit

format: install
	$(BIN)/ruff format $(LINT_PATHS)
	$(BIN)/ruff check --fix $(LINT_PATHS)

# Every benchmark (a private Kafka broker for the Kafka one; wrk for HTTP) into bench/results.json, then renders
# docs/performance.md from it (BENCH_ARGS="--only http" reruns one and merges, "--quick" is a smoke run).
bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

# The shipped model: reproducible from this recipe (tests/detection/test_default_model.py retrains it and compares).
# Trained on the attack-free stream of a world of the simulator family's *tuning* region (issue 15): behaviours
# drawn, not the simulator's defaults; never a held-out world. Sizes are set here; the mobile users are the
# world's drawn share of the browser users. The world's own seed: JWTWATCH_SEED is emptied so it cannot override.
MODEL_TRAINING_EVENTS := .cache/train-baseline.parquet
model: install
	mkdir -p .cache
	JWTWATCH_SEED= $(BIN)/jwtwatch simulate --baseline-only --family-seed 15 --family-region tuning --family-world 0 \
		--minutes 90 --users 600 --services 30 --offices 16 --out $(MODEL_TRAINING_EVENTS)
	$(BIN)/jwtwatch train --events $(MODEL_TRAINING_EVENTS) --model-dir models/default --seed 0 --no-history

clean:
	$(PYTHON) scripts/build-accel --clean
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis data
