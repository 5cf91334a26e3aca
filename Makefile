# Everyday commands. `make demo` and `make test` are the README's two set-up commands.
PY ?= python3

.PHONY: setup setup-dev demo test test-fast lint format lock upgrade bench serve clean

setup:            ## install ragtune, CPU torch and the packaged models (locked versions)
	PYTHON=$(PY) scripts/setup.sh

setup-dev:        ## install with the test tools (locked versions)
	PYTHON=$(PY) scripts/setup.sh --dev

demo: setup       ## the main job: index, tune, evaluate, report, verdict (embedded defaults)
	ragtune demo

test: setup-dev   ## the whole test suite (what CI runs)
	$(PY) -m pytest

test-fast:        ## everything except the tests on the real packaged models
	$(PY) -m pytest -m "not slow"

lint:             ## ruff + the import-layer contract + mypy
	ruff check . && ruff format --check . && lint-imports && $(PY) -m mypy -p ragtune

format:
	ruff check --fix . && ruff format .

# requirements/runtime.txt and dev.txt pin every package the suite passed with (pip-compile,
# from pyproject.toml's ranges). `make lock` re-resolves them after a pyproject.toml change and
# keeps every pin it can; `make upgrade` moves them all to the newest releases, installs those
# and runs the whole suite: commit the new lock only if it passes.
PIP_COMPILE = CUSTOM_COMPILE_COMMAND="make lock" $(PY) -m piptools compile --quiet \
	--strip-extras --all-build-deps --unsafe-package pip --no-emit-index-url --no-emit-find-links

lock:             ## re-resolve requirements/*.txt after a pyproject.toml change (pins kept; needs setup-dev)
	$(PIP_COMPILE) $(LOCK_FLAGS) --output-file requirements/runtime.txt pyproject.toml
	$(PIP_COMPILE) $(LOCK_FLAGS) --extra dev --constraint requirements/runtime.txt \
		--output-file requirements/dev.txt pyproject.toml

upgrade: setup-dev ## newest releases into the lock, installed, then the whole suite
	$(MAKE) lock LOCK_FLAGS=--upgrade
	PYTHON=$(PY) scripts/setup.sh --dev
	$(PY) -m pytest

bench:            ## all benchmarks (slow; prints figures and baselines)
	$(PY) bench/bench_indexer.py
	$(PY) bench/bench_tuner.py
	$(PY) bench/bench_service.py

serve:
	ragtune serve

clean:
	rm -rf ragtune-data .pytest_cache .ruff_cache
