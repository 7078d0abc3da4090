# casera-runbooks. `make demo` and `make test` do all set-up on a fresh Debian 12 machine (root).
SHELL := /bin/bash
PYTHON ?= python3
# Debian packages the runbooks, the local cloud and the tests use.
DEBS := docker.io debootstrap postgresql-15 pgbouncer redis-server openssh-client \
        openssh-server iptables iproute2 docker-registry openssl git ca-certificates

.PHONY: install demo test test-quick nbval lint local-up local-down bench

install: .make/debs .make/python

.make/debs: Makefile
	@mkdir -p .make
	@missing=$$(for p in $(DEBS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@touch $@

.make/python: pyproject.toml
	@mkdir -p .make
	$(PYTHON) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

# The main job on the embedded default: the local cloud, then the bootstrap runbook on it.
demo: install
	casera local up
	casera run bootstrap --env local
	@casera runs --env local | tail -n 3

# Everything CI runs: lint, library tests, the local cloud's parts (each starts what it
# needs), the bootstrap end to end on a fresh local cloud, then nbval over every runbook
# against that cloud (already converged, so quick). The order is deliberate: the end-to-end
# tests leave the local cloud bootstrapped for nbval.
PYTEST := $(PYTHON) -m pytest -q -rs -p no:cacheprovider
test: install
	ruff check lib tests runbooks scripts
	@# Start from an empty local cloud: what an earlier session left must not change results.
	$(PYTHON) -m casera.runner.cli local down
	$(PYTEST) tests --ignore=tests/e2e
	$(PYTEST) tests/e2e
	$(PYTEST) --nbval-lax runbooks

# The inner loop: no local cloud, no kernels.
test-quick: install
	$(PYTHON) -m pytest -q -m "not localcloud and not slow" tests

nbval: install
	$(PYTHON) -m pytest -q --nbval-lax runbooks

lint: install
	ruff check lib tests runbooks

local-up: install
	casera local up

local-down:
	casera local down
