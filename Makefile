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
	# pip byte-compiles the installed modules one at a time (about 50 s here); compileall
	# does it on every core. Like pip, a file that does not compile is left as it is.
	$(PY) -m pip install --quiet --no-compile -e ".[test]"
	-$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null
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
