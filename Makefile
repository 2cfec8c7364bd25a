# `make demo` runs the pipeline on the bundled sample; `make test` runs the tests.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
REQS := requirements-dev.txt constraints.txt pyproject.toml $(wildcard containers/*/requirements.txt)
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONWARNINGS ?= ignore::DeprecationWarning

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): $(REQS)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt -c constraints.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	@# Debian's chromium for the console's browser tests (Playwright drives it; no browser download).
	@test -x /usr/bin/chromium || { test "$$(id -u)" = 0 && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } || \
		echo "warning: tests/test_console.py needs Debian's chromium: sudo apt-get install chromium" >&2
	touch $@

demo: $(STAMP)
	$(BIN)/python pipeline.py run --local --data data/sample --workdir demo-output \
		--eval_fraction 0.2 --accuracy_threshold 0.7
	$(BIN)/python -m flowers.demo --workdir demo-output

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/preprocess.py
	$(BIN)/python bench/serve.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache demo-output
