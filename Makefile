# The two commands: `make demo` runs the main job, `make test` runs every check.
# Both create .venv and install bingfa with everything it needs first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck pytest bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,dask,redis]'
	touch $(STAMP)

# The main job: which concurrency model wins for which workload, measured here.
demo: $(STAMP)
	$(BIN)/bingfa compare --quick --report bingfa-report/compare.md \
		--plot bingfa-report/compare.png --json bingfa-report/compare.json

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q -n 2

bench: $(STAMP)
	$(BIN)/python benchmarks/server_cpu.py
	$(BIN)/python benchmarks/bench_workers.py
	$(BIN)/python benchmarks/tls_memory.py
	$(BIN)/python benchmarks/bench_generator.py
	$(BIN)/python benchmarks/bench_executor.py
	$(BIN)/python benchmarks/bench_pipeline.py
	$(BIN)/python benchmarks/bench_locks.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
