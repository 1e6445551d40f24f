# The two commands a newcomer runs: `make demo` and `make test`. Both set up first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup system-tools demo test test-fast bench clean

setup: $(STAMP) system-tools

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

system-tools:
	@bash utils/system_tools.sh

demo: setup
	$(PY) utils/demo.py

test: setup
	$(PY) -m pytest tests

test-fast: setup
	$(PY) -m pytest tests -m "not slow"

bench: setup
	$(PY) utils/bench_rewire.py
	$(PY) utils/bench_downstream.py
	$(PY) utils/bench_ctc.py

clean:
	rm -rf $(VENV) results data/mini
