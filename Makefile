# The two commands of the README: `make demo` (install + run the main job) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install -q -c constraints.txt
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint bench clean

# torch first and pinned (the CPU build on this machine); then the package with the same constraints.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
	$(PIP) -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import torch, nasprune; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/python -m nasprune demo

test: install
	$(BIN)/ruff check nasprune services tests benchmarks
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/extract_export.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
