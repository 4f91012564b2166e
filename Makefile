# Two entry points for a fresh machine (Python 3.11 and make):
#   make repro   set up .venv from the lock and run the whole DVC pipeline on the bundled sample, then print the
#                comparison table
#   make test    set up .venv from the lock and run the test suite
# and one for maintainers:
#   make lock    re-resolve requirements.lock from pyproject.toml (+ requirements/torch-cpu.in), with hashes
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCK := requirements.lock

.PHONY: setup test test-all repro lock clean

setup: $(VENV)/.installed

# Every library comes from the lock, hash-checked, so a fresh machine runs the versions that wrote dvc.lock; the
# project itself is installed on top without resolving anything.
$(VENV)/.installed: $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes --no-deps -r $(LOCK)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

# pyproject.toml keeps ranges; the lock pins the whole environment (all extras, for Python 3.11 on Linux x86_64).
# The project's own line (the dev extra names bert-rs[serve,ray]) is dropped: `setup` installs it editable.
lock: setup
	$(BIN)/pip install -q pip-tools
	$(BIN)/pip-compile -q --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
		--extra dev --extra bench --extra docs -o $(LOCK) pyproject.toml requirements/torch-cpu.in
	sed -i -e '/^# WARNING: pip install will require/,/^# Consider using a hashable URL/d' \
		-e '/^bert-rs @ /,/^    # via bert-rs/d' $(LOCK)

test: setup
	$(BIN)/pytest -q

test-all: setup
	$(BIN)/pytest -q -m "slow or not slow"

# The committed bytes on any x86-64 CPU with AVX2: torch, MKL, oneDNN, OpenBLAS, numpy and FAISS are held to their
# AVX2 code paths, since an AVX-512 machine's kernels sum in other orders and write other last digits
REPRO_ENV := ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 OPENBLAS_CORETYPE=Haswell \
	FAISS_OPT_LEVEL=avx2 NPY_DISABLE_CPU_FEATURES="AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR"

repro: setup
	@[ -d .git ] || git init -q
	PATH="$(CURDIR)/$(BIN):$$PATH" HF_HUB_OFFLINE=1 $(REPRO_ENV) $(BIN)/dvc repro
	@cat reports/comparison.md

clean:
	rm -rf data/prepared data/encoders data/embeddings data/models
