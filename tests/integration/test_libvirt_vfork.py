"""A libvirt domain whose init is in vfork(), waiting for its child to exec (as dash is
for a moment each time it runs a command).  Such a pair cannot be stopped while the child
runs in its parent's memory: the dump lets the freeze go until the child has exec'd, then
freezes again (tests/workloads/wl_vfork.c; a CI run's `virsh managedsave` of a dash loop
waited forever before).  A child that does not exec in time is refused by name."""

from __future__ import annotations

import json

from test_libvirt_save import LXC_CR, run, state, virsh
from treeutil import build, children, vfork_child, wait_for

from lxc_cr.dump import VFORK_PATIENCE
from lxc_cr.kernel.cgroup import Freezer
from lxc_cr.kernel.ptrace import STOP_PATIENCE
from lxc_cr.runtime.libvirt import _status_init_pid

def vfork_domain(libvirt_domain, tmp_path, pause_ms: int, *mode: str):
    counter = tmp_path / "count"
    dom = libvirt_domain("vfork", persistent=True, init=str(build("wl_vfork")),
                         initargs=(str(counter), str(pause_ms), *mode))
    read = lambda: int(counter.read_text().strip() or 0) if counter.exists() else 0  # noqa: E731
    return dom, _status_init_pid(dom.name(), timeout=10), read


def waiting_child(init: int) -> int:
    """The child of ``init`` while ``init`` waits in clone(CLONE_VFORK) (0: none)."""
    kids = children(init)
    if len(kids) != 1:
        return 0
    with open(f"/proc/{init}/syscall") as f:
        return kids[0] if f.read().split()[0] == "56" else 0


def tracer(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(ln for ln in f if ln.startswith("TracerPid:")).split()[1])


def test_save_waits_for_the_vfork_child_to_exec(libvirt_domain, tmp_path):
    dom, init, count = vfork_domain(libvirt_domain, tmp_path, pause_ms=2000)
    name = dom.name()
    wait_for(lambda: count() >= 1, what="a first sleep")
    wait_for(lambda: vfork_child(init), what="a fresh vfork() child")
    img = tmp_path / "dom.save"
    r = run(LXC_CR, "virsh", "save", name, img)   # begun while the child is in vfork()
    assert r.returncode == 0, r.stderr
    assert state(name) == "shut off"
    at_save = count()

    doc = json.loads(run(LXC_CR, "inspect", img, "--json").stdout)
    comms = {t["pid"]: t["comm"] for t in doc["tasks"]}
    # no child was dumped in its parent's memory: a child there is `sleep`, after its exec
    assert comms[1] == "wl_vfork" and sorted(comms.values()) in (
        ["sleep", "wl_vfork"], ["wl_vfork"]), comms

    r = run(LXC_CR, "virsh", "restore", img)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: count() >= at_save + 2, what="two more sleeps after the restore")
    virsh("destroy", name)


def test_a_child_that_does_not_exec_is_refused(libvirt_domain, tmp_path):
    dom, init, _ = vfork_domain(libvirt_domain, tmp_path, pause_ms=600_000)
    name = dom.name()
    child = wait_for(lambda: vfork_child(init), what="the vfork() child")
    img = tmp_path / "dom.save"
    r = run(LXC_CR, "virsh", "save", name, img)
    assert r.returncode == 1, r.stderr
    assert r.stderr == (
        f"lxc-cr: error: pid {child} (wl_vfork): runs in the memory of its parent pid "
        f"{init} (wl_vfork), as a vfork() child does: the dump waited {VFORK_PATIENCE:g} s "
        f"for such children to exec or exit: not supported\n")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(img.name)] == []
    # untouched: running, nothing traced or frozen, the child still in vfork()
    assert state(name) == "running"
    assert Freezer(init).state() == "THAWED"
    assert tracer(init) == 0 and tracer(child) == 0
    assert vfork_child(init) == child
    with open(f"/proc/{child}/stat") as f:
        assert f.read().rsplit(")", 1)[1].split()[0] == "S"
    virsh("destroy", name)


def test_a_thread_that_does_not_stop_fails_the_save(libvirt_domain, tmp_path):
    """clone(CLONE_VFORK) without CLONE_VM: the child has a memory of its own, so it is not
    waited for as a vfork() child, and the parent cannot stop while the dump holds the
    child.  The dump fails after STOP_PATIENCE naming the parent, and the domain runs on."""
    dom, init, count = vfork_domain(libvirt_domain, tmp_path, 600_000, "novm")
    name = dom.name()
    child = wait_for(lambda: waiting_child(init), what="the CLONE_VFORK child")
    img = tmp_path / "dom.save"
    r = run(LXC_CR, "virsh", "save", name, img)
    assert r.returncode == 1, r.stderr
    assert r.stderr == (f"lxc-cr: error: pid {init} (wl_vfork) thread {init} did not stop "
                        f"within {STOP_PATIENCE:g} s (state D, in kernel_clone)\n")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(img.name)] == []
    assert state(name) == "running"
    assert Freezer(init).state() == "THAWED"
    assert tracer(init) == 0 and tracer(child) == 0
    assert waiting_child(init) == child and count() == 0
    virsh("destroy", name)
