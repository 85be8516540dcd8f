"""libvirt integration: virsh-style save/restore/managedsave of LXC domains on a real
libvirtd; the restored domain is an ordinary libvirt domain."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_lxc_checkpoint import wait_for
from test_lxc_network import client_ns  # noqa: F401 - fixture
from treeutil import children, proc_report, tree_pids

REPO = Path(__file__).resolve().parents[2]
LXC_CR = REPO / ".venv" / "bin" / "lxc-cr"
URI = "lxc:///system"


def run(*argv, timeout=120) -> subprocess.CompletedProcess:
    """ARGV with captured text output.  One that hangs past ``timeout`` fails the test with
    what /proc shows of it and of every libvirt domain's processes, then its Python
    traceback (faulthandler, SIGABRT)."""
    argv = [str(a) for a in argv]
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONFAULTHANDLER="1"))
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        roots = [p.pid] + [c for ctl in _controllers() for c in children(ctl)]
        report = proc_report(h for r in roots for h in tree_pids(r))
        p.send_signal(signal.SIGABRT)
        try:
            out, err = p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        pytest.fail(f"{' '.join(argv)}: timed out after {timeout} s\n{report}\n"
                    f"its stderr:\n{err}", pytrace=False)
    return subprocess.CompletedProcess(argv, p.returncode, out, err)


def _controllers() -> list[int]:
    """Pids of libvirt_lxc, each the parent of one domain's init."""
    out = []
    for d in os.listdir("/proc"):
        try:
            if d.isdigit() and Path(f"/proc/{d}/comm").read_text().strip() == "libvirt_lxc":
                out.append(int(d))
        except OSError:
            pass
    return out


def virsh(*args) -> subprocess.CompletedProcess:
    return run("virsh", "-c", URI, *args)


def counter_domain(libvirt_domain, tmp_path, label):
    f = tmp_path / f"{label}-counter"
    loop = f"i=0; while true; do i=$((i+1)); echo $i > {f}; sleep 0.1; done"
    dom = libvirt_domain(label, persistent=True, initargs=("-c", loop))
    read = lambda: int(f.read_text().strip() or 0) if f.exists() else 0  # noqa: E731
    wait_for(lambda: read() >= 3, what="the domain's counter")
    return dom, read


def state(name: str) -> str:
    return virsh("domstate", name).stdout.strip()


def test_save_restore_destroy(libvirt_domain, tmp_path):
    dom, count = counter_domain(libvirt_domain, tmp_path, "save")
    name = dom.name()
    img = tmp_path / "dom.save"
    pre = count()
    r = run(LXC_CR, "virsh", "save", name, img, "--verbose")
    assert r.returncode == 0, r.stderr
    assert f"Domain '{name}' saved to {img}" in r.stdout
    assert "Save: [100 %]" in r.stdout
    assert state(name) == "shut off"
    assert name in virsh("list", "--all").stdout
    at_save = count() or pre          # empty: the shell was stopped mid-write
    r = run(LXC_CR, "virsh", "save-image-dumpxml", img)
    assert r.returncode == 0 and f"<name>{name}</name>" in r.stdout, r.stderr

    r = run(LXC_CR, "virsh", "restore", img)
    assert r.returncode == 0, r.stderr
    assert state(name) == "running"
    seen = wait_for(lambda: count() > at_save and count(), what="the counter to continue")
    assert seen <= at_save + 50, "the counter restarted"
    r = virsh("suspend", name)
    assert r.returncode == 0 and state(name) == "paused"
    assert virsh("resume", name).returncode == 0
    r = run(LXC_CR, "virsh", "restore", img)
    assert r.returncode == 1 and "already active" in r.stderr, r.stderr
    assert virsh("destroy", name).returncode == 0
    assert state(name) == "shut off"
    # the persistent definition kept its own init, not the restore shim
    assert "<init>/bin/sh</init>" in virsh("dumpxml", name, "--inactive").stdout


def test_managedsave_and_start(libvirt_domain, tmp_path):
    dom, count = counter_domain(libvirt_domain, tmp_path, "msave")
    name = dom.name()
    pre = count()
    r = run(LXC_CR, "virsh", "managedsave", name)
    assert r.returncode == 0, r.stderr
    assert state(name) == "shut off"
    assert "Managed save:   yes" in run(LXC_CR, "virsh", "dominfo", name).stdout
    at_save = count() or pre          # empty: the shell was stopped mid-write
    r = run(LXC_CR, "virsh", "start", name)
    assert r.returncode == 0, r.stderr
    assert state(name) == "running"
    wait_for(lambda: count() > at_save, what="the counter after start")
    assert "Managed save:   no" in run(LXC_CR, "virsh", "dominfo", name).stdout
    assert virsh("destroy", name).returncode == 0
    # managedsave-remove, then start cold-boots
    assert virsh("start", name).returncode == 0
    wait_for(lambda: count() >= 1, what="a fresh boot")
    assert run(LXC_CR, "virsh", "managedsave", name).returncode == 0
    r = run(LXC_CR, "virsh", "managedsave-remove", name)
    assert r.returncode == 0 and "Removed managedsave image" in r.stdout
    (tmp_path / "msave-counter").unlink()
    r = run(LXC_CR, "virsh", "start", name)
    assert r.returncode == 0, r.stderr
    first = wait_for(lambda: count(), what="a cold boot")
    assert first < at_save, "start after managedsave-remove must cold-boot"
    virsh("destroy", name)


def test_virsh_errors(libvirt_domain, tmp_path):
    r = run(LXC_CR, "virsh", "save", "lxccr-test-no-such-domain", tmp_path / "x")
    assert r.returncode == 2 and "failed to get domain" in r.stderr, r.stderr
    dom = libvirt_domain("stopped", persistent=True, start=False)
    r = run(LXC_CR, "virsh", "save", dom.name(), tmp_path / "y")
    assert r.returncode == 1 and "not running" in r.stderr, r.stderr
    bad = tmp_path / "corrupt.save"
    bad.write_bytes(b"not an image at all" * 100)
    r = run(LXC_CR, "virsh", "restore", bad)
    assert r.returncode == 2 and r.stderr.startswith("lxc-cr: error:"), r.stderr
    assert r.stderr.count("\n") == 1


def test_own_rootfs_and_bridge_interface(lxc_container, libvirt_domain, cc, client_ns, tmp_path):
    """A domain with its own root (a busybox rootfs) and an <interface> on the bridge keeps
    its address, and its TCP listener's state, through save and restore."""
    from xml.sax.saxutils import escape

    from test_lxc_network import ADDR, SERVER, ask
    ct = lxc_container("vroot")                      # only for its busybox rootfs
    rootfs = Path(ct.lxcpath) / ct.name / "rootfs"
    srv = rootfs / "bin" / "srv"
    srv.write_bytes(Path(cc(SERVER, "-static", name="srv")).read_bytes())
    srv.chmod(0o755)
    loop = (f"ip addr add {ADDR}/24 dev eth0; ip link set eth0 up; "
            "/bin/srv </dev/null >/dev/null 2>&1 & "
            "i=0; while true; do i=$((i+1)); echo $i > /tmp/c; sleep 0.1; done")
    xml = f"""<domain type='lxc'>
  <name>{{name}}</name>
  <memory unit='MiB'>64</memory>
  <os><type>exe</type><init>/bin/sh</init><initarg>-c</initarg>
      <initarg>{escape(loop).replace('{', '{{').replace('}', '}}')}</initarg></os>
  <devices>
    <filesystem type='mount'><source dir='{rootfs}'/><target dir='/'/></filesystem>
    <interface type='bridge'><source bridge='lxcbr0'/></interface>
    <console type='pty'/>
  </devices>
</domain>"""
    dom = libvirt_domain("vroot", persistent=True, xml=xml)
    name = dom.name()
    first = wait_for(lambda: ask(client_ns), what="the domain's server from the bridge")
    img = tmp_path / "vroot.save"
    r = run(LXC_CR, "virsh", "save", name, img)
    assert r.returncode == 0, r.stderr
    assert state(name) == "shut off"
    r = run(LXC_CR, "virsh", "restore", img)
    assert r.returncode == 0, r.stderr
    assert state(name) == "running"
    after = wait_for(lambda: ask(client_ns), what="the restored server")
    assert after == first + 1, "the listener's counter did not continue"
    assert virsh("destroy", name).returncode == 0


def _console_lines(name: str, timeout: float = 3.0) -> list[str]:
    """Lines the domain writes on its console, read from the host side of the pty."""
    import os
    import select
    pty = virsh("ttyconsole", name).stdout.strip()
    fd = os.open(pty, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and data.count(b"\n") < 4:
            if select.select([fd], [], [], 0.2)[0]:
                data += os.read(fd, 4096)
    finally:
        os.close(fd)
    return data.decode(errors="replace").split()


def test_transient_paused_restore_and_console(libvirt_domain, tmp_path):
    """A transient domain: save --paused, restore (left paused, as virsh does), resume;
    its console still carries its output."""
    loop = "i=0; while true; do i=$((i+1)); echo tick$i; sleep 0.1; done"
    dom = libvirt_domain("cons", initargs=("-c", loop))
    name = dom.name()
    wait_for(lambda: any(w.startswith("tick") for w in _console_lines(name)), what="console")
    img = tmp_path / "cons.save"
    r = run(LXC_CR, "virsh", "save", name, img, "--paused")     # recorded in the image
    assert r.returncode == 0, r.stderr
    r = run(LXC_CR, "virsh", "restore", img)
    assert r.returncode == 0, r.stderr
    assert state(name) == "paused"
    assert virsh("resume", name).returncode == 0
    ticks = wait_for(lambda: [int(w[4:]) for w in _console_lines(name)
                              if w.startswith("tick") and w[4:].isdigit()], what="ticks")
    assert ticks == sorted(ticks) and ticks[0] > 1, ticks   # continued, not restarted
    assert virsh("destroy", name).returncode == 0


def test_init_found_through_the_controller(libvirt_domain, tmp_path):
    """When libvirtd's status file keeps <init pid='0'/> (it learns the pid only from an
    asynchronous event of the controller's monitor), the init is found from the controller
    itself, and only where that is proven: libvirt_lxc --name NAME and its one child that is
    pid 1 of another pid namespace.  Checked against the pid libvirt recorded, or, when
    libvirtd lost this domain's monitor too (its status then keeps 0), against the domain's
    definition: the found process runs the domain's <init> with its <initarg>s."""
    import os
    import re as re_
    import time
    import xml.etree.ElementTree as ET
    from lxc_cr.runtime.libvirt import STATUS_DIR, _controller_init
    dom, _ = counter_domain(libvirt_domain, tmp_path, "ctl")
    name = dom.name()
    deadline = time.monotonic() + 10
    while True:                      # libvirtd records the init when the event arrives
        text = Path(f"{STATUS_DIR}/{name}.xml").read_text()
        ctrl = int(re_.search(r"<domstatus [^>]*pid='(\d+)'", text).group(1))
        init = int(re_.search(r"<init pid='(\d+)'", text).group(1))
        if init or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    found = _controller_init(name, ctrl)
    assert found
    if init:
        assert found == init
    else:
        os_el = ET.fromstring(dom.XMLDesc()).find("os")
        want = [os_el.findtext("init")] + [a.text for a in os_el.findall("initarg")]
        got = Path(f"/proc/{found}/cmdline").read_bytes().split(b"\0")[:-1]
        assert [g.decode() for g in got] == want
    assert _controller_init(name + "-other", ctrl) is None     # another domain's controller
    assert _controller_init(name, os.getpid()) is None        # not a libvirt_lxc at all
    assert _controller_init(name, found) is None              # the init is no controller


def test_wait_inactive_destroys_a_domain_whose_tree_is_gone(libvirt_domain, tmp_path):
    """libvirtd sometimes loses its monitor connection to a domain's controller at start-up
    and then never learns that the domain ended.  After a save has killed the tree, lxc-cr
    destroys such a domain through libvirt (cleanup only); a persistent one stays defined.
    Here the init is killed by hand and lxc-cr does not wait for libvirtd to notice."""
    import os
    import signal as sig

    from lxc_cr.runtime.libvirt import _wait_inactive, init_pid
    dom, _ = counter_domain(libvirt_domain, tmp_path, "gone")
    name = dom.name()
    os.kill(init_pid(name), sig.SIGKILL)
    _wait_inactive(dom, name, timeout=30, notice=0)
    assert state(name) == "shut off"
    assert name in virsh("list", "--all", "--name").stdout.split()
