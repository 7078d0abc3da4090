# casera-runbooks. `make demo` and `make test` do all set-up on a fresh Debian 12 machine (root).
SHELL := /bin/bash
# The interpreter that creates the project's virtual environment. Debian's own python3 is the
# default (what operators have); it refuses `pip install` outside a venv (PEP 668), so every
# Python package goes into .venv and every target below runs the venv's binaries.
PYTHON ?= $(firstword $(wildcard /usr/bin/python3) python3)
VENV := .venv
VPY := $(VENV)/bin/python
VBIN := $(VENV)/bin
# Debian packages the runbooks, the local cloud and the tests use (python3-venv: Debian's
# python3 cannot make a venv without it; chromium: the browser tests drive it through
# Playwright, whose own browser download cannot work offline).
DEBS := docker.io debootstrap postgresql-15 pgbouncer redis-server openssh-client \
        openssh-server iptables iproute2 docker-registry openssl git ca-certificates \
        python3-venv chromium shellcheck

.PHONY: install demo test test-quick nbval lint local-up local-down bench

PYSTAMP := .make/python$(subst /,_,$(PYTHON))
# The widget manager the HTML reports inline (see its rule below).
HTML_MANAGER := 1.0.15
HTML_MANAGER_SHA256 := 2b9d65cb7913e1c7d671757a10008b32c9c2448d4429513371e55c07d6107638
WIDGET_BUNDLE := lib/casera/runner/vendor/html-manager-embed.js

install: .make/debs $(PYSTAMP) .make/nbstripout $(WIDGET_BUNDLE)

.make/debs: Makefile
	@mkdir -p .make
	@missing=$$(for p in $(DEBS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@touch $@

# The venv is remade when it was made by another interpreter (make PYTHON=... switches it).
$(PYSTAMP): pyproject.toml localcloud/pyproject.toml .make/debs
	@mkdir -p .make
	@want=$$($(PYTHON) -c 'import sys; print(sys.base_prefix)'); \
	have=$$($(VPY) -c 'import sys; print(sys.base_prefix)' 2>/dev/null || true); \
	if [ "$$want" != "$$have" ]; then \
	  echo "creating $(VENV) with $(PYTHON) ($$want)"; rm -rf $(VENV); $(PYTHON) -m venv $(VENV); \
	fi
	@# The product, and beside it the local cloud (its own distribution, see localcloud/).
	$(VPY) -m pip install -q --disable-pip-version-check -e '.[dev]' -e ./localcloud
	@rm -f .make/python*; touch $@

# The widget manager `casera show` inlines so a report renders its widgets offline: the
# bundle that needs no require.js, from npm, checked against the hash it had when pinned.
$(WIDGET_BUNDLE): | .make/debs
	@mkdir -p .make/npm $(dir $@)
	@# Debian's npm conflicts with a nodejs that brings its own npm: only when there is none.
	@command -v npm >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm
	cd .make/npm && npm pack --silent @jupyter-widgets/html-manager@$(HTML_MANAGER) >/dev/null
	@echo "$(HTML_MANAGER_SHA256)  .make/npm/jupyter-widgets-html-manager-$(HTML_MANAGER).tgz" \
	  | sha256sum -c --quiet
	tar -xzf .make/npm/jupyter-widgets-html-manager-$(HTML_MANAGER).tgz -O \
	  package/dist/embed.js.LICENSE.txt > $(dir $@)html-manager-embed.js.LICENSE.txt
	tar -xzf .make/npm/jupyter-widgets-html-manager-$(HTML_MANAGER).tgz -O \
	  package/dist/embed.js > $@.tmp && mv $@.tmp $@

# A save from JupyterLab writes outputs into runbooks/: this git filter keeps them out of
# commits (nbstripout's manual filter installation, https://pypi.org/project/nbstripout/0.2.4/).
# Only runbooks/: outputs/<env>/ are committed with their outputs as the audit trail.
# tests/test_runbooks_stripped.py fails on a source runbook that still has outputs.
# --keep-id: by default nbstripout renumbers cell ids 0, 1, 2…, so one inserted cell rewrites
# every id after it and two branches that each add a step conflict on all of them.
.make/nbstripout: $(PYSTAMP)
	@if git rev-parse --git-dir >/dev/null 2>&1; then \
	  git config filter.nbstripout.clean '"$(abspath $(VPY))" -m nbstripout --keep-id'; \
	  git config filter.nbstripout.smudge cat; \
	  git config filter.nbstripout.required true; \
	  attrs=$$(git rev-parse --git-path info/attributes); mkdir -p "$$(dirname "$$attrs")"; \
	  grep -qxF 'runbooks/*.ipynb filter=nbstripout' "$$attrs" 2>/dev/null || \
	    echo 'runbooks/*.ipynb filter=nbstripout' >> "$$attrs"; \
	fi
	@touch $@

# The main job on the embedded default: the local cloud, then the bootstrap runbook on it.
demo: install
	$(VBIN)/casera local up
	$(VBIN)/casera run bootstrap --env local
	@$(VBIN)/casera runs --env local | tail -n 3

# Everything CI runs: lint, library tests, the local cloud's parts (each starts what it
# needs), the bootstrap end to end on a fresh local cloud, then nbval over every runbook
# against that cloud (already converged, so quick). The order is deliberate: the end-to-end
# tests leave the local cloud bootstrapped for nbval.
# -rfEs: the log ends with one line per failed, errored and skipped test.
PYTEST := $(VPY) -m pytest -q -rfEs -p no:cacheprovider
# pytest-xdist workers for the tests that need no local cloud (see `test`).
XDIST := -n 3
# The local-cloud tests that drive the local engine (nodes, images, a deployed stack); the
# other local-cloud tests never touch it and run beside them (see `test`).
ENGINE_TESTS := tests/localcloud/nodes tests/localcloud/images
test: install
	@# Each phase's start time is printed: the suite's budget is read from the CI log.
	@date +'phase lint and local cloud: started %T'
	$(VBIN)/ruff check lib tests runbooks scripts
	@# Start from an empty local cloud: what an earlier session left must not change results
	@# (--purge: the emulators' accounts too; the image caches stay).
	$(VBIN)/casera local down --purge
	@# Three runs side by side, each mostly waiting (the CPU stays mostly idle):
	@# - the tests that need the local engine (nodes, images, a stack): they share one
	@#   dockerd and its network, so they run one at a time, in this shell;
	@# - the other local-cloud tests: emulators, PostgreSQL and PgBouncer of their own on free
	@#   ports (tests/localcloud_harness.py), never the engine;
	@# - the tests that need no local cloud, on three xdist workers.
	@# The two background runs' logs are printed after, not interleaved.
	@mkdir -p .make; echo "engine tests here; emulator and no-cloud tests beside them"
	@$(PYTEST) $(XDIST) -m "not localcloud" tests --ignore=tests/e2e > .make/no-cloud.log 2>&1 & \
	  nc=$$!; $(PYTEST) --durations=10 -m localcloud tests --ignore=tests/e2e \
	    $(addprefix --ignore=,$(ENGINE_TESTS)) > .make/emulators.log 2>&1 & \
	  em=$$!; $(PYTEST) --durations=20 -m localcloud $(ENGINE_TESTS); lc=$$?; \
	  wait $$em; emrc=$$?; echo "--- local-cloud tests on emulators (exit $$emrc):"; \
	  cat .make/emulators.log; \
	  wait $$nc; ncrc=$$?; echo "--- tests needing no local cloud (exit $$ncrc):"; \
	  cat .make/no-cloud.log; test $$lc -eq 0 && test $$emrc -eq 0 && test $$ncrc -eq 0
	@date +'phase e2e: started %T'
	$(PYTEST) --durations=0 tests/e2e
	@date +'phase nbval: started %T'
	$(PYTEST) --nbval-lax runbooks
	@date +'phase nbval: ended %T'

# The inner loop: no local cloud, no kernels.
test-quick: install
	$(PYTEST) $(XDIST) -m "not localcloud and not slow" tests

nbval: install
	$(PYTEST) --nbval-lax runbooks

lint: install
	$(VBIN)/ruff check lib tests runbooks scripts

local-up: install
	$(VBIN)/casera local up

local-down: install
	$(VBIN)/casera local down

bench: install
	$(VPY) scripts/bench_local_up.py
	$(VPY) scripts/bench_bootstrap.py
	$(VPY) scripts/bench_load.py
