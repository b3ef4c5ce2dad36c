# The two commands: `make run` (the console with demo data) and `make test` (the suite).
# Everything else here is what they need. See README.md.

VENV := .venv
STAMP := $(VENV)/.requirements-installed
# Python 3.11: python3.11 if installed, else python3 when that is 3.11.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || \
	(python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null && command -v python3))
PYTEST_ARGS ?=
# `make run` ports: from the environment or the command line (make run CONSOLE_PORT=8001).
CONSOLE_PORT ?= 8000
SANDBOX_PORT ?= 8100

.PHONY: run test venv services test-tools demo clean-demo help mutation

help:
	@echo "make run     start the console with demo data on http://127.0.0.1:8000/admin/ (Ctrl-C stops it);"
	@echo "             other ports: make run CONSOLE_PORT=8001 SANDBOX_PORT=8101"
	@echo "make test    run the whole test suite (installs Chromium and pg_dump when it can; starts PostgreSQL and Redis)"
	@echo "make venv    create .venv and install requirements-dev.txt when it changed"
	@echo "make clean-demo  delete the local SQLite database, broker folders and logs (keeps .env)"

$(VENV)/bin/python:
	@if [ -z "$(PYTHON)" ]; then \
		echo "Python 3.11 is needed: install it (apt-get install -y python3.11 python3.11-venv) or run make PYTHON=/path/to/python3.11" >&2; \
		exit 1; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip

# Reinstall only when a requirements file is newer than the stamp.
$(STAMP): requirements.txt requirements-dev.txt | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install --quiet -r requirements-dev.txt
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	@CONSOLE_PORT="$(CONSOLE_PORT)" SANDBOX_PORT="$(SANDBOX_PORT)" scripts/run.sh

services:
	@scripts/ensure_services.sh

# Chromium and pg_dump: installed with apt-get when possible, else it stops before pytest
# with the command to run.
test-tools:
	@scripts/ensure_test_tools.sh

# pytest's own exit code is kept in var/pytest-exit-code for .ci/run (make itself
# exits 2 on any failure).
test: $(STAMP) test-tools services
	@mkdir -p var
	@rm -f var/pytest-exit-code
	@$(VENV)/bin/pytest -q $(PYTEST_ARGS); rc=$$?; echo $$rc > var/pytest-exit-code; exit $$rc

clean-demo:
	rm -rf db.sqlite3 db.sqlite3-wal db.sqlite3-shm var/broker var/log var/celerybeat-schedule*

# Mutation testing of the probe sweep (slow; not part of `make test`): see docs/TESTING.md.
mutation: $(STAMP) services
	$(VENV)/bin/mutmut run --max-children 1; $(VENV)/bin/mutmut results
