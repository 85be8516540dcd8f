"""LXC integration: real busybox containers (template config unchanged) through
``lxc-checkpoint`` and ``lxc-cr lxc``; the restored container is managed by LXC again."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from treeutil import exited, tree_pids

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"

RCS = """#!/bin/sh
/bin/syslogd
/bin/sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done' </dev/null >/dev/null 2>&1 &
"""


def run(*argv, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout)


def rootfs(ct) -> Path:
    return Path(ct.lxcpath) / ct.name / "rootfs"


def counter(ct) -> int:
    """The counter file's value; 0 while it is empty (``echo > file`` truncates first, and a
    checkpoint may stop the shell between the truncation and the write)."""
    try:
        return int((rootfs(ct) / "tmp" / "counter").read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def wait_for(cond, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def processes(ct) -> set[tuple[int, str]]:
    """(pid, command) of the container's long-lived processes, seen from inside."""
    r = ct.attach("ps")
    assert r.returncode == 0, r.stderr
    out = set()
    for line in r.stdout.splitlines()[1:]:
        parts = line.split(None, 2)
        if len(parts) == 3 and not re.match(r"\[?(ps|sleep)\b", parts[2]):   # incl. a sleep not yet reaped
            out.add((int(parts[0]), parts[2]))
    return out


def counter_container(lxc_container, label="ct"):
    ct = lxc_container(label)
    (rootfs(ct) / "etc" / "init.d" / "rcS").write_text(RCS)
    ct.start()
    wait_for(lambda: counter(ct) >= 3, what="the counter loop")
    return ct


def lxc_info(ct) -> str:
    r = run("lxc-info", "-n", ct.name, "-P", ct.lxcpath)
    return r.stdout


def test_lxc_checkpoint_stop_and_restore(lxc_container, tmp_path):
    ct = counter_container(lxc_container, "ckpt")
    before = processes(ct)
    assert any("syslogd" in cmd for _, cmd in before)
    d = tmp_path / "ckpt"
    pre = counter(ct)
    pids = tree_pids(ct.init_pid())
    r = run(VENV_BIN / "lxc-checkpoint", "-n", ct.name, "-P", ct.lxcpath, "-D", d, "-s")
    assert r.returncode == 0, r.stderr
    # dead when it returns (the init may be a zombie until LXC's monitor collects it); the
    # monitor may still be cleaning up, and lxc-info waits for it
    assert [p for p in pids if not exited(p)] == []
    assert re.search(r"State:\s+STOPPED", lxc_info(ct))
    at_checkpoint = counter(ct) or pre
    # the file as it is now: empty if the checkpoint froze the shell between its truncation
    # and its write, and then it must stay empty
    frozen = (rootfs(ct) / "tmp" / "counter").read_bytes()
    time.sleep(0.3)
    assert (rootfs(ct) / "tmp" / "counter").read_bytes() == frozen, \
        "the container kept running after -s"

    r = run(VENV_BIN / "lxc-checkpoint", "-n", ct.name, "-P", ct.lxcpath, "-D", d, "-r")
    assert r.returncode == 0, r.stderr
    info = lxc_info(ct)
    assert re.search(r"State:\s+RUNNING", info), info
    assert int(re.search(r"PID:\s+(\d+)", info).group(1)) == ct.init_pid()
    seen = wait_for(lambda: counter(ct) > at_checkpoint and counter(ct), what="counter to advance")
    assert at_checkpoint < seen <= at_checkpoint + 50, "the counter restarted instead of continuing"
    assert processes(ct) == before
    r = run("lxc-stop", "-n", ct.name, "-P", ct.lxcpath, "-t", "30")
    assert r.returncode == 0, r.stderr
    assert re.search(r"State:\s+STOPPED", lxc_info(ct))


def test_lxc_checkpoint_leaves_running_by_default(lxc_container, tmp_path):
    ct = counter_container(lxc_container, "live")
    d = tmp_path / "ckpt"
    r = run(VENV_BIN / "lxc-cr", "lxc", "checkpoint", ct.name, d, "-P", ct.lxcpath)
    assert r.returncode == 0, r.stderr
    c0 = counter(ct)
    wait_for(lambda: counter(ct) > c0 + 2, what="the counter after a live checkpoint")
    assert (d / "lxc-cr.img").stat().st_mode & 0o777 == 0o600
    r = run(VENV_BIN / "lxc-cr", "lxc", "restore", ct.name, d, "-P", ct.lxcpath)
    assert r.returncode == 1 and "running" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("lxc-cr: error:")


def test_lxc_refuses_stopped_and_unknown(lxc_container, tmp_path):
    ct = lxc_container("stopped")
    r = run(VENV_BIN / "lxc-checkpoint", "-n", ct.name, "-P", ct.lxcpath, "-D", tmp_path / "x")
    assert r.returncode == 1 and "not running" in r.stderr, r.stderr
    r = run(VENV_BIN / "lxc-cr", "lxc", "checkpoint", "lxccr-test-no-such", tmp_path / "y")
    assert r.returncode == 2 and "no such container" in r.stderr, r.stderr


def test_lxc_twenty_cycles(lxc_container, tmp_path):
    ct = counter_container(lxc_container, "cycles")
    last = counter(ct)
    for cycle in range(20):
        d = tmp_path / f"c{cycle}"
        r = run(VENV_BIN / "lxc-cr", "lxc", "checkpoint", ct.name, d, "--stop", "-P", ct.lxcpath)
        assert r.returncode == 0, f"cycle {cycle}: {r.stderr}"
        at = counter(ct) or last          # empty: stopped between truncation and write
        assert at >= last
        r = run(VENV_BIN / "lxc-cr", "lxc", "restore", ct.name, d, "-P", ct.lxcpath)
        assert r.returncode == 0, f"cycle {cycle}: {r.stderr}"
        last = wait_for(lambda: counter(ct) > at and counter(ct), what=f"cycle {cycle} counter")
    ct.stop()


URING = r"""
#include <stdio.h>
#include <unistd.h>
#include <fcntl.h>
#include <string.h>
#include <sys/syscall.h>
int main(void) {
    unsigned char params[120]; memset(params, 0, sizeof params);
    int fd = syscall(425, 4, params);            /* io_uring_setup */
    if (fd < 0) return 1;
    for (unsigned long i = 0;; i++) {
        int o = open("/tmp/uring", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dprintf(o, "%lu\n", i); close(o); usleep(50000);
    }
}
"""


def test_lxc_unsupported_resource_refused(lxc_container, cc, tmp_path):
    ct = lxc_container("uring")
    binary = cc(URING, name="uring")
    target = rootfs(ct) / "bin" / "uring"
    target.write_bytes(Path(binary).read_bytes())
    target.chmod(0o755)
    (rootfs(ct) / "etc" / "init.d" / "rcS").write_text(
        RCS + "/bin/uring </dev/null >/dev/null 2>&1 &\n")
    ct.start()
    uring = rootfs(ct) / "tmp" / "uring"
    wait_for(lambda: uring.exists() and uring.read_text().strip(), what="the io_uring holder")
    r = run(VENV_BIN / "lxc-cr", "lxc", "checkpoint", ct.name, tmp_path / "d", "-P", ct.lxcpath)
    assert r.returncode == 1
    assert re.match(r"lxc-cr: error: pid \d+ \(uring\) fd \d+: io_uring instance: not supported",
                    r.stderr), r.stderr
    assert not (tmp_path / "d" / "lxc-cr.img").exists()
    assert ct.state() == "RUNNING"
    c0 = counter(ct)
    wait_for(lambda: counter(ct) > c0, what="the container to keep running")


def test_second_operation_on_a_container_refused(lxc_container, tmp_path):
    """One operation per container: while a lock holder (another lxc-cr) runs, a second
    checkpoint refuses at once, and the container is untouched."""
    import fcntl
    import os
    ct = counter_container(lxc_container, "lock")
    lockdir = Path("/run/lxc-cr/lock")
    lockdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lockdir / f"lxc-{ct.name}", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.pwrite(fd, b"pid 1234: checkpoint\n", 0)
        r = run(VENV_BIN / "lxc-cr", "lxc", "checkpoint", ct.name, tmp_path / "d", "-P", ct.lxcpath)
        assert r.returncode == 1
        assert "another lxc-cr operation is in progress" in r.stderr and "pid 1234" in r.stderr
        assert r.stderr.count("\n") == 1
    finally:
        os.close(fd)
    assert ct.state() == "RUNNING"
    r = run(VENV_BIN / "lxc-cr", "lxc", "checkpoint", ct.name, tmp_path / "d", "-P", ct.lxcpath)
    assert r.returncode == 0, r.stderr


def test_refused_image_leaves_the_container_stopped(lxc_container, tmp_path):
    """LXC starts the container while the image is checked, its init held in the
    start-host hook before its exec.  An image refused then (a corrupt record, an image of
    another kind) is answered "no": LXC aborts the start, the container stays stopped and
    does not boot fresh, and the image, once repaired, still restores."""
    ct = counter_container(lxc_container, "refused")
    d = tmp_path / "ckpt"
    r = run(VENV_BIN / "lxc-checkpoint", "-n", ct.name, "-P", ct.lxcpath, "-D", d, "-s")
    assert r.returncode == 0, r.stderr
    at = counter(ct)
    frozen = (rootfs(ct) / "tmp" / "counter").read_bytes()
    image = d / "lxc-cr.img"
    from lxc_cr.image.reader import ImageReader
    with ImageReader(str(image)) as rd:
        offset = rd.pack_offset + 20         # in the record pack (compressed records)
    original = image.read_bytes()
    with open(image, "r+b") as f:
        f.seek(offset)
        f.write(bytes([original[offset] ^ 0xFF]))

    # an image of another kind: a tree dump of a sleeping process
    other = tmp_path / "other"
    other.mkdir()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        r = run(VENV_BIN / "lxc-cr", "tree", "dump", sleeper.pid, other / "lxc-cr.img")
        assert r.returncode == 0, r.stderr
    finally:
        sleeper.kill()
        sleeper.wait()

    for where, why in ((d, "checksum"), (other, "not an LXC checkpoint")):
        # not a speed bound: a hook left unanswered holds the start until its own 60 s
        # timeout, and lxc-stop waits for it meanwhile
        r = run(VENV_BIN / "lxc-checkpoint", "-n", ct.name, "-P", ct.lxcpath, "-D", where, "-r",
                timeout=50)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith("lxc-cr: error:") and r.stderr.count("\n") == 1, r.stderr
        assert why in r.stderr, r.stderr
        assert re.search(r"State:\s+STOPPED", lxc_info(ct)), lxc_info(ct)
        time.sleep(1)          # a fresh boot would run rcS, and its loop rewrite the counter
        assert re.search(r"State:\s+STOPPED", lxc_info(ct)), "the container booted fresh"
        assert (rootfs(ct) / "tmp" / "counter").read_bytes() == frozen

    image.write_bytes(original)
    r = run(VENV_BIN / "lxc-checkpoint", "-n", ct.name, "-P", ct.lxcpath, "-D", d, "-r")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: counter(ct) > at, what="the counter to continue")
    assert counter(ct) <= at + 50, "the counter restarted instead of continuing"
    ct.stop()
