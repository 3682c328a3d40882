# `make demo` and `make test` are the only set-up commands on a fresh machine:
# each creates .venv and installs what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench lint clean example-movielens

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

# recbole, without its dependencies, only for the MovieLens-100K files it ships
# (examples/movielens and its test)
$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev,torch]'
	$(BIN)/pip install -q --no-deps recbole==1.2.1
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/attnmon demo

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# SASRec trained on MovieLens-100K, a defective and a harmless update, served through
# attnmon in simulated time (README); ARGS=--quick for the short run CI does
example-movielens: $(VENV)/.installed-dev
	$(BIN)/python -m examples.movielens $(ARGS)

bench: $(VENV)/.installed-dev
	$(BIN)/python -m benchmarks

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check monitor collectors alerts dashboards tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
