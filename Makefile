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

.PHONY: demo test setup root

root:
	@[ "$$(id -u)" -eq 0 ] || { echo "make: lxc-cr needs root (run as root)" >&2; exit 1; }

# The venv sees the distro's python3-lxc and python3-libvirt (--system-site-packages).
# It is rebuilt when missing or made without system site packages; pip runs again when
# pyproject.toml changes.  (pip is bounded: setuptools' package discovery must not follow
# symlinks out of the tree -- stored /proc trees under tests/ hold root -> /.)
$(VENV_STAMP): pyproject.toml | root
	integration/install-deps.sh
	if ! grep -qs '^include-system-site-packages = true' $(VENV)/pyvenv.cfg \
	   || ! $(PY) -c '' 2>/dev/null; then \
	    rm -rf $(VENV); /usr/bin/python3 -m venv --system-site-packages $(VENV); \
	fi
	timeout 900 $(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test]' </dev/null
	$(PY) -c 'import lxc, libvirt, lxc_cr'
	touch $@

# internal: packages, venv, bridge and libvirtd
setup: $(VENV_STAMP)
	integration/env-up.sh

test: setup
	integration/env-down.sh
	timeout --kill-after=60 $(TEST_TIMEOUT) $(PY) -m pytest tests $(PYTEST_ARGS) </dev/null
	integration/check-clean.sh

demo: setup
	integration/demo.sh
