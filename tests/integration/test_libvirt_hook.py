"""The libvirt hook installed by ``lxc-cr hooks install``: a plain ``virsh start`` of a domain
with an lxc-cr managed save refuses, saying how to resume or discard it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from test_libvirt_save import LXC_CR, counter_domain, run, state, virsh, wait_for

REPO = Path(__file__).resolve().parents[2]


def restart_libvirtd():
    r = subprocess.run([str(REPO / "integration" / "env-up.sh"), "--restart-libvirtd"],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.fixture
def hooks_installed(env_ready):
    r = run(LXC_CR, "hooks", "install")
    assert r.returncode == 0, r.stderr
    restart_libvirtd()
    yield
    run(LXC_CR, "hooks", "uninstall")
    restart_libvirtd()


def test_plain_start_refused_with_managed_save(hooks_installed, libvirt_domain, tmp_path):
    assert "installed (" in run(LXC_CR, "hooks", "status").stdout
    dom, count = counter_domain(libvirt_domain, tmp_path, "hook")
    name = dom.name()
    pre = count()
    assert run(LXC_CR, "virsh", "managedsave", name).returncode == 0
    at_save = count() or pre
    r = virsh("start", name)
    assert r.returncode != 0
    assert "lxc-cr virsh start" in r.stderr and "managedsave-remove" in r.stderr, r.stderr
    assert state(name) == "shut off"
    r = run(LXC_CR, "virsh", "start", name)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: count() > at_save, what="the resumed counter")
    assert virsh("destroy", name).returncode == 0
    # without a managed save a plain start goes through
    assert virsh("start", name).returncode == 0
    assert virsh("destroy", name).returncode == 0
