# One entry point for people and CI. `make test` builds everything from nothing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BUF := node_modules/.bin/buf
PIP := $(PY) -m pip install -q --disable-pip-version-check -c requirements/constraints.txt

.PHONY: demo test soak proto proto-release bench clean

$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e ./clients/python
	$(PIP) -e '.[dev]'
	touch $@

demo: $(VENV)/.installed  ## the main job
	$(PY) -m specbuilder demo

$(BUF): package.json package-lock.json
	npm ci --silent --no-audit --no-fund
	touch $@

test: $(VENV)/.installed $(BUF)  ## set up from nothing and run the whole suite
	$(PY) -m pytest -q -n 2

soak: $(VENV)/.installed  ## the reliability suite in its long mode, with its tables
	$(PY) -m pytest -q tests/reliability --soak --reliability-report out/reliability
	$(PY) tests/reliability/report.py out/reliability

proto: $(VENV)/.installed  ## regenerate the wire package's Python code (clients/python/specbuilder_wire/v1) from protos/
	$(PY) tools/protogen.py

proto-release: $(BUF)  ## record protos/ as released: from then on `make test` refuses breaking changes to them
	$(BUF) build --exclude-source-info -o protos/released/v1.json

bench: $(VENV)/.installed  ## print the benchmark tables (README figures)
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) node_modules build *.egg-info .pytest_cache clients/python/build clients/python/*.egg-info
