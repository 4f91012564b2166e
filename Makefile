# Two entry points for a fresh machine (Python >= 3.10 and make):
#   make repro   set up .venv and run the whole DVC pipeline on the bundled sample, then print the comparison table
#   make test    set up .venv and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch 2.13.0 is pinned in the setup step only so that pip takes the CPU build already on this kind of machine
# instead of a multi-GB CUDA build; the project itself accepts any torch in pyproject.toml's range.
TORCH ?= torch==2.13.0

.PHONY: setup test test-all repro bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

test: setup
	$(BIN)/pytest -q

test-all: setup
	$(BIN)/pytest -q -m "slow or not slow"

repro: setup
	@[ -d .git ] || git init -q
	PATH="$(CURDIR)/$(BIN):$$PATH" HF_HUB_OFFLINE=1 $(BIN)/dvc repro
	@cat reports/comparison.md

clean:
	rm -rf data/prepared data/encoders data/embeddings data/models
