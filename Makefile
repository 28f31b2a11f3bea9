# `make test` and `make demo` do all set-up themselves: a virtual environment in .venv with
# the pinned versions of constraints.txt, then the command. Nothing is downloaded from a model hub.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stic-installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test test-fast demo demo-model lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: an unpinned torch may pull a newer multi-GB build.
	$(PY) -m pip install --quiet -c constraints.txt torch torchvision
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

test: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q

# The quick loop while editing: everything but the tests marked slow (under a minute here).
test-fast: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q -m "not slow"

demo: install
	$(VENV)/bin/stic demo

# Rebuild the demo's base model in place (the package ships it; about 29 minutes on 2 CPU cores).
demo-model: install
	$(VENV)/bin/stic demo-model --out src/stic/demo/tiny_llava

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: install
	$(VENV)/bin/ruff format src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
