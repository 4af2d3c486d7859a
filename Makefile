# campus-edge-agent: the two commands a fresh Debian machine needs (as root),
# plus the long runs that stay out of CI.
#   make demo   set up and run the agent on simulated pins against a local broker
#   make test   set up and run ruff, mypy --strict and the whole test suite
#   make bench  benchmarks against raw paho-mqtt (QUICK=1 for a short run)
#   make bench-fleet  the centre at 100 to 20,000 devices (QUICK=1: under 3 minutes)
#   make soak   the fault suite at full counts

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: all demo test lint typecheck pytest bench bench-fleet soak clean deps mosquitto faketime venv

all: test

venv: $(STAMP)

$(STAMP): setup.py
	@if ! $(PYTHON) -c 'import venv, ensurepip' >/dev/null 2>&1; then \
		echo "installing python3-venv"; apt-get update && apt-get install -y python3-venv; fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || { \
		echo "installing mosquitto"; apt-get update && apt-get install -y mosquitto mosquitto-clients; }

faketime:
	@ls /usr/lib/*/faketime/libfaketimeMT.so.1 >/dev/null 2>&1 || { \
		echo "installing faketime (the clock-jump fault test)"; apt-get update && apt-get install -y faketime; }

deps: venv mosquitto

lint: venv
	$(VENV)/bin/ruff check $(wildcard agent tests bench scripts docs/examples)

typecheck: venv
	$(VENV)/bin/mypy agent

pytest: deps faketime
	$(PY) -m pytest $(PYTEST_ARGS)

test: deps lint typecheck pytest

demo: deps
	$(PY) scripts/demo.py

bench: deps
	$(PY) bench/run.py $(if $(QUICK),--quick,)

bench-fleet: deps
	$(PY) bench/fleet.py $(if $(QUICK),--quick,)

soak: deps faketime
	SOAK=1 $(PY) -m pytest tests/faults -m slow -p no:cacheprovider -s $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
