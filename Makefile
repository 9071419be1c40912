# radvqa — `make build-corpus` and `make test` set themselves up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
OUT    ?= build/corpus
RECIPE ?= sample

.PHONY: build-corpus regenerate test lint bench venv system-deps testdata clean

$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed setup.py
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed-test

## Build the sample corpus (built-in phantoms) into $(OUT).
build-corpus: $(VENV)/.installed
	$(VENV)/bin/radvqa build --recipe $(RECIPE) --output $(OUT)

## Rebuild $(OUT) after editing templates, pools or splits: stored pixels reused.
regenerate: $(VENV)/.installed
	$(VENV)/bin/radvqa regenerate --output $(OUT)

## Debian tools the tests use (dcm2niix; chromium renders the report); needs root or sudo.
system-deps:
	@command -v dcm2niix >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dcm2niix; }
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; }

## Real third-party test data (pyradiomics sdist data/), cached under .cache/.
testdata: $(VENV)/.installed-test
	$(PY) scripts/fetch_test_data.py

test: $(VENV)/.installed-test system-deps testdata
	$(PY) -m pytest

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check pipeline tests scripts bench setup.py

## Benchmarks, never tests: a table on stdout, raw timings in bench/results.json (see
## bench/run.py).  Inputs are generated once into .cache/bench/.  About 5 min on 2 quiet cores
## (totalseg included), plus about 2 min once to write the inputs.
bench: $(VENV)/.installed
	$(PY) bench/run.py

clean:
	rm -rf build .pytest_cache .ruff_cache
