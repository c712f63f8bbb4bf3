# The two commands of the README: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= runs/demo
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test test-fast test-all test-soak lint format venv clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	DEMO_DIR=$(DEMO_DIR) PYTHON=$(abspath $(PY)) $(PY) scripts/demo.py

# What CI runs: everything but the soak tier (the fault-injection suite beyond its hang
# regression test, and the end-to-end benchmark run). Two pytest-xdist workers, a test file
# each at a time (module and session fixtures built once per worker), in the order of
# tests/conftest.py (longest files first; xdist would otherwise start with the files of most
# tests and leave the 11-minute overfitting test, one test, to the end); the 30 slowest tests
# are listed at the end.
test: $(VENV)/.installed
	$(PY) -m pytest tests -q -m "not soak" -n 2 --dist loadfile --no-loadscope-reorder --durations=30

# Two workers (pytest-xdist): much of a test's time is single-threaded tracing and Python.
test-fast: $(VENV)/.installed
	$(PY) -m pytest tests -q -m "not slow" -n 2

test-soak: $(VENV)/.installed
	$(PY) -m pytest tests -q -m soak

test-all: $(VENV)/.installed
	$(PY) -m pytest tests -q

lint: $(VENV)/.installed
	$(PY) -m ruff check solo_tf export tests benchmarks scripts
	$(PY) -m ruff format --check solo_tf export tests benchmarks scripts

format: $(VENV)/.installed
	$(PY) -m ruff format solo_tf export tests benchmarks scripts
	$(PY) -m ruff check --fix solo_tf export tests benchmarks scripts

clean:
	rm -rf $(VENV) runs build *.egg-info
