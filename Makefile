# lxc-cr: two commands for people, `make demo` and `make test`.  Both must run as root,
# install what they need (Debian packages, the venv) and are safe to repeat.

SHELL        := /bin/bash
.SHELLFLAGS  := -euo pipefail -c
.DEFAULT_GOAL := test

VENV         := .venv
PY           := $(VENV)/bin/python
VENV_STAMP   := $(VENV)/.lxccr-installed
# make test must stay well under CI's limit: stop pytest after 35 minutes
TEST_TIMEOUT ?= 2100
PYTEST_ARGS  ?=

.PHONY: demo test setup root soak bench

root:
	@[ "$$(id -u)" -eq 0 ] || { echo "make: lxc-cr needs root (run as root)" >&2; exit 1; }

# The venv sees the distro's python3-lxc and python3-libvirt (--system-site-packages).
# It is rebuilt when missing or made without system site packages; pip runs again when
# pyproject.toml changes.  setuptools' package discovery (namespaces = true, its default)
# walks every directory and follows symlinks: a stored /proc tree under tests/ with
# root -> / makes it walk / for ever, so refuse that before pip starts (and bound pip).
# editable_mode=compat: the repository goes on sys.path through a plain .pth line; the
# default editable finder costs every lxc-cr command 16 ms of start-up (issue #11).
$(VENV_STAMP): pyproject.toml | root
	integration/install-deps.sh
	links="$$(find . \( -path ./.venv -o -path ./.git \) -prune -o -type l -xtype d -print | head -n 3)"; \
	if [ -n "$$links" ] && ! grep -qE '^namespaces *= *false' pyproject.toml; then \
	    echo "make: pip install -e would follow directory symlinks ($$links):" \
	         "add 'namespaces = false' to [tool.setuptools.packages.find] in pyproject.toml" >&2; \
	    exit 1; \
	fi
	if ! grep -qs '^include-system-site-packages = true' $(VENV)/pyvenv.cfg \
	   || ! $(PY) -c '' 2>/dev/null; then \
	    rm -rf $(VENV); /usr/bin/python3 -m venv --system-site-packages $(VENV); \
	fi
	timeout 900 $(VENV)/bin/pip install -q --disable-pip-version-check \
	    --config-settings editable_mode=compat -e '.[test]' </dev/null
	$(PY) -c 'import lxc, libvirt, lxc_cr'
	touch $@

# internal: packages, venv, bridge and libvirtd
setup: $(VENV_STAMP)
	$(PY) -m compileall -q lxc_cr   # byte code, as an installed package has: each start of lxc-cr
	integration/env-up.sh

# env-down.sh first removes what an interrupted earlier run left; check-clean.sh runs even
# when pytest failed, and its verdict adds to pytest's (exit 5, no test collected, fails).
test: setup
	integration/env-down.sh
	rc=0; timeout --kill-after=60 $(TEST_TIMEOUT) $(PY) -m pytest tests $(PYTEST_ARGS) </dev/null \
	    || rc=$$?; integration/check-clean.sh || rc=1; exit $$rc

demo: setup
	integration/demo.sh

# Not part of make test: 100 checkpoint/restore cycles of a busybox container
# (tests/soak, marker soak); the time of each cycle goes to tests/soak/results/*.json.
soak: setup
	rc=0; $(PY) -m pytest tests/soak --run-soak -s -q $(PYTEST_ARGS) </dev/null || rc=$$?; \
	    integration/check-clean.sh || rc=1; exit $$rc

# benchmarks (not part of make test): ratios against a raw copy measured in the same run;
# a table on stdout, JSON in benchmarks/results/.  BENCH_ARGS=--quick for a short run.
BENCH_ARGS ?=
bench: setup
	$(PY) benchmarks/run.py $(BENCH_ARGS)
