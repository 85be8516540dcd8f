"""Crash safety of a real busybox LXC container: SIGKILL of ``lxc-cr lxc checkpoint`` at ten
seeded moments (live and --stop), ``lxc-cr recover`` of a stale intent, image modes.

Kills are step-synchronised: each run writes ``LXC_CR_FAULT_TRACE``; three runs are held
(``LXC_CR_FAULT_HOLD``) at the ``cgroup frozen`` step, so they are killed with the cgroup
certainly frozen, and the others are killed a seeded random delay after the ``checked``
step (the last one before the intent and the freeze), spread over the measured length of
a whole dump.  After each kill the container must run on (its counter advancing) and hold
no partial image, at most after ``lxc-cr recover``; only a dump that got past its
``verified`` step may leave an image, and that image must be complete.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

from test_lxc_checkpoint import (
    VENV_BIN,
    counter,
    counter_container,
    lxc_info,
    run,
    wait_for,
)
from treeutil import (
    assert_continued,
    assert_running_untraced,
    dump_kill,
    harness_fixture,
    launch_threads,
    read_state,
    tids,
    wait_changed,
    wait_state,
)

from lxc_cr import intent
from lxc_cr.kernel.cgroup import Freezer

tree = harness_fixture()

LXC_CR = VENV_BIN / "lxc-cr"
SEED = 20261201
IMG = "lxc-cr.img"


def steps(trace: Path) -> list[str]:
    return trace.read_text().splitlines() if trace.exists() else []


def step_number(trace: Path, name: str) -> int:
    for line in steps(trace):
        op, n, what = line.split(" ", 2)
        if op == "dump" and what == name:
            return int(n)
    raise AssertionError(f"no dump step {name!r} in {steps(trace)}")


def checkpoint_cmd(ct, d: Path, stop: bool) -> list[str]:
    return [str(LXC_CR), "lxc", "checkpoint", ct.name, str(d), "-P", ct.lxcpath] + \
        (["--stop"] if stop else [])


def start_dump(ct, d: Path, stop: bool, trace: Path, hold: int | None = None):
    env = dict(os.environ, LXC_CR_FAULT_TRACE=str(trace))
    env.pop("LXC_CR_FAULT", None)
    if hold is not None:
        env["LXC_CR_FAULT_HOLD"] = f"dump:{hold}"
    return subprocess.Popen(checkpoint_cmd(ct, d, stop), env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_trace(trace: Path, proc, name: str, timeout: float = 60.0) -> bool:
    """Until the dump reached step ``name`` (True) or ended without it (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(line.endswith(f" {name}") for line in steps(trace)):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    raise AssertionError(f"dump never reached {name}: {steps(trace)}")


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name == IMG or intent.TEMP_RE.match(p.name)) \
        if d.exists() else []


def target_intents(ct) -> list:
    return [r for r in intent.intents() if r.kind == "lxc" and r.name == ct.name]


def running_on(ct, timeout: float = 20.0) -> bool:
    if not re.search(r"State:\s+RUNNING", lxc_info(ct)):
        return False
    c0 = counter(ct)
    try:
        wait_for(lambda: counter(ct) > c0 + 1, timeout=timeout, what="the counter")
    except AssertionError:
        return False
    return True


def ct_affinities(ct) -> set[frozenset]:
    """The CPU affinities of the threads in the container's freezer cgroup."""
    d = Freezer(ct.init_pid()).dir
    for name in ("tasks", "cgroup.threads"):          # v1, v2
        try:
            with open(os.path.join(d, name)) as f:
                tids = [int(t) for t in f.read().split()]
            break
        except FileNotFoundError:
            continue
    else:
        raise AssertionError(f"no thread list in {d}")
    out = set()
    for t in tids:
        try:
            out.add(frozenset(os.sched_getaffinity(t)))
        except OSError:                                # gone meanwhile (a sleep)
            continue
    return out


def test_sigkill_during_checkpoint_ten_moments(lxc_container, tmp_path):
    ct = counter_container(lxc_container, "kill")
    all_cpus = os.sched_getaffinity(ct.init_pid())
    freezer = Freezer(ct.init_pid())

    # one traced live checkpoint: the step numbers and how long a dump lasts after "checked"
    trace = tmp_path / "trace-0"
    proc = start_dump(ct, tmp_path / "d0", False, trace)
    assert wait_trace(trace, proc, "checked")
    t_checked = time.monotonic()
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    window = time.monotonic() - t_checked
    frozen_step = step_number(trace, "cgroup frozen")

    rng = random.Random(SEED)
    plan = [("hold", False), ("hold", True), ("hold", False)] + \
        [("random", bool(i % 2)) for i in range(7)]
    report = []
    recovered = 0
    for i, (how, stop) in enumerate(plan):
        d = tmp_path / f"k{i}"
        trace = tmp_path / f"trace-{i + 1}"
        delay = None
        if how == "hold":
            proc = start_dump(ct, d, stop, trace, hold=frozen_step)
            assert wait_trace(trace, proc, "cgroup frozen")
            assert freezer.state() == "FROZEN"
        else:
            proc = start_dump(ct, d, stop, trace)
            delay = rng.uniform(0.0, window)
            wait_trace(trace, proc, "checked")
            time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        rc = proc.wait(timeout=60)
        reached = [line.split(" ", 2)[2] for line in steps(trace)]
        where = f"kill {i} ({how}, {'--stop' if stop else 'live'}, delay {delay}, rc {rc}, " \
                f"steps {reached})"
        report.append(where)
        verified = "verified" in reached

        if how == "hold":
            # the watchdog alone thaws the cgroup, removes the intent and logs it
            wait_for(lambda: freezer.state() == "THAWED", timeout=30, what=f"watchdog: {where}")
            wait_for(lambda: not target_intents(ct), timeout=30, what=f"intent gone: {where}")
            log = Path(intent.LOG_FILE).read_text()
            assert f"watchdog: lxc:{ct.name}: thawed {freezer.dir}" in log, where

        stopped = re.search(r"State:\s+STOPPED", lxc_info(ct))
        if stopped and verified and stop:
            # killed after the image was complete and the container killed: restore it
            r = run(LXC_CR, "inspect", d / IMG)
            assert r.returncode == 0, f"{where}: {r.stderr}"
            r = run(LXC_CR, "lxc", "restore", ct.name, d, "-P", ct.lxcpath)
            assert r.returncode == 0, f"{where}: {r.stderr}"
        if not running_on(ct) or target_intents(ct) or (leftovers(d) and not verified):
            r = run(LXC_CR, "recover")
            assert r.returncode == 0, f"{where}: {r.stdout}{r.stderr}"
            recovered += 1
        assert running_on(ct), f"the container does not run on after {where}"
        assert not target_intents(ct), where
        # no thread stays pinned to the CPU the dump ran its threads on (ptrace.Colocation)
        wait_for(lambda: ct_affinities(ct) == {frozenset(all_cpus)}, timeout=10,
                 what=f"every thread's own CPU affinity after {where}")
        left = leftovers(d)
        if verified:
            assert not [n for n in left if n != IMG], f"{where}: {left}"
            if left:
                assert run(LXC_CR, "inspect", d / IMG).returncode == 0, where
        else:
            assert not left, f"{where}: partial files left: {left}"

        # and the next checkpoint just works (live, into the same directory)
        r = run(LXC_CR, "lxc", "checkpoint", ct.name, d, "-P", ct.lxcpath)
        assert r.returncode == 0, f"after {where}: {r.stderr}"
        assert running_on(ct), where

    print("\n".join(report), f"\nrecover needed after {recovered} of {len(plan)} kills")

    # a full --stop checkpoint and restore afterwards, into a directory lxc-cr creates:
    # 0700, the image and the config copy 0600 and owned by root
    d = tmp_path / "final" / "ckpt"
    r = run(LXC_CR, "lxc", "checkpoint", ct.name, d, "--stop", "-P", ct.lxcpath)
    assert r.returncode == 0, r.stderr
    at = counter(ct)
    assert d.stat().st_mode & 0o777 == 0o700
    for f in (d / IMG, d / "config"):
        st = f.stat()
        assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o600, 0, 0), f
    r = run(LXC_CR, "lxc", "restore", ct.name, d, "-P", ct.lxcpath)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: counter(ct) > at, what="the counter after the final restore")
    ct.stop()


def dead_pid() -> tuple[int, int]:
    """A pid that existed and is gone now, with the start time it had."""
    p = subprocess.Popen(["sleep", "60"])
    start = intent.start_time(p.pid)
    p.kill()
    p.wait()
    return p.pid, start


def stale_intent(ct, d: Path, freezer) -> tuple[intent.Intent, list[Path]]:
    """What a dump killed while frozen leaves: a frozen cgroup, a temporary image, the
    intent, plus a stale temporary image of an older dead dump."""
    d.mkdir(parents=True, exist_ok=True)
    pid, start = dead_pid()
    other, _ = dead_pid()
    image = d / IMG
    rec = intent.Intent(owner_pid=pid, owner_start=start, kind="lxc", name=ct.name,
                        freezer=freezer.dir, image=str(image),
                        temp=intent.temp_path(str(image), pid), image_before=None,
                        created=time.time_ns())
    temps = [Path(rec.temp), Path(intent.temp_path(str(image), other))]
    for t in temps:
        t.write_bytes(b"LXCCRIMG partial")
    intent.write(rec)
    freezer.freeze()
    return rec, temps


def test_recover_stale_intent(lxc_container, tmp_path):
    ct = counter_container(lxc_container, "recover")
    freezer = Freezer(ct.init_pid())
    rec, temps = stale_intent(ct, tmp_path / "d", freezer)
    c0 = counter(ct)
    time.sleep(0.5)
    assert counter(ct) == c0 and freezer.state() == "FROZEN"

    r = run(LXC_CR, "recover")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert f"lxc:{ct.name}: thawed {freezer.dir} (dump by pid {rec.owner_pid} died)" in lines
    assert f"lxc:{ct.name}: removed temporary image {temps[0]} (dump by pid {rec.owner_pid} " \
           f"died)" in lines
    assert any(f"removed stale temporary image {temps[1]}" in line for line in lines), lines
    assert freezer.state() == "THAWED"
    assert not any(t.exists() for t in temps) and not os.path.exists(rec.path)
    assert running_on(ct)
    r = run(LXC_CR, "recover")
    assert r.returncode == 0 and r.stdout.strip() == "nothing to recover" or \
        f"lxc:{ct.name}" not in r.stdout, r.stdout

    # the implicit part: a checkpoint of the same container first undoes a stale intent
    rec, temps = stale_intent(ct, tmp_path / "d2", freezer)
    r = run(LXC_CR, "lxc", "checkpoint", ct.name, tmp_path / "d2", "-P", ct.lxcpath)
    assert r.returncode == 0, r.stderr
    assert f"lxc-cr: recovered lxc:{ct.name}: thawed {freezer.dir}" in r.stderr, r.stderr
    assert not any(t.exists() for t in temps) and not os.path.exists(rec.path)
    assert (tmp_path / "d2" / IMG).exists()
    assert running_on(ct)
    ct.stop()


def watchdogs_of(dumper: int) -> list[int]:
    """The processes running ``python -m lxc_cr.intent --watchdog`` for one of the dumper's
    intents (``KIND-NAME.PID.json``)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                argv = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"lxc_cr.intent" in argv and argv[-2:-1] and \
                    argv[-2].endswith(f".{dumper}.json".encode()):
                out.append(int(d.name))
    return out


def open_files(pid: int) -> dict[int, str]:
    """fd -> target; an fd closed between the listing and its readlink is left out (a
    watchdog still starting opens and closes module files as it imports them)."""
    out = {}
    for f in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(f)] = os.readlink(f"/proc/{pid}/fd/{f}")
        except FileNotFoundError:
            pass
    return out


def watchdog_ready(w: int) -> dict[int, str]:
    """The watchdog's open files once it holds the pidfd of the dumper it watches (a fresh
    interpreter gets there 60-140 ms after the dump started it)."""
    def ready():
        fds = open_files(w)
        return fds if "anon_inode:[pidfd]" in fds.values() else None
    return wait_for(ready, timeout=30, what=f"watchdog {w} to hold the dumper's pidfd")


def test_intent_file_is_private_and_gone_after_a_dump(lxc_container, tmp_path):
    """The intent exists (0600, JSON naming the freezer and the temporary image) while the
    dump holds at its frozen step, and is gone once a dump ends, well or not."""
    ct = counter_container(lxc_container, "intent")
    trace = tmp_path / "trace"
    proc = start_dump(ct, tmp_path / "d", False, trace)
    assert proc.wait(timeout=120) == 0
    frozen_step = step_number(trace, "cgroup frozen")
    env = dict(os.environ, LXC_CR_FAULT_HOLD=f"dump:{frozen_step}",
               LXC_CR_FAULT_HOLD_SECONDS="3", LXC_CR_FAULT_TRACE=str(tmp_path / "t2"))
    proc = subprocess.Popen(checkpoint_cmd(ct, tmp_path / "e", False), env=env,
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _check_held_dump(ct, tmp_path, proc)
    finally:
        if proc.poll() is None:             # a failed check leaves no dump running
            proc.kill()
            proc.wait()
    assert not target_intents(ct)
    # a handled failure (injected at the frozen step) removes it too
    env = dict(os.environ, LXC_CR_FAULT=f"dump:{frozen_step}")
    r = subprocess.run(checkpoint_cmd(ct, tmp_path / "f", False), env=env, capture_output=True,
                       text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert r.returncode == 1 and "injected fault" in r.stderr, r.stderr
    assert not target_intents(ct) and not leftovers(tmp_path / "f")
    assert running_on(ct)
    ct.stop()


def _check_held_dump(ct, tmp_path, proc) -> None:
    """The intent and the watchdog of a dump held at its frozen step; the dump's end."""
    assert wait_trace(tmp_path / "t2", proc, "cgroup frozen")
    recs = target_intents(ct)
    assert len(recs) == 1
    st = os.stat(recs[0].path)
    assert st.st_mode & 0o777 == 0o600 and st.st_uid == 0
    data = json.loads(Path(recs[0].path).read_text())
    assert data["owner_pid"] == proc.pid and data["freezer"] == Freezer(ct.init_pid()).dir
    assert data["temp"] == str(tmp_path / "e" / f".{IMG}.tmp-{proc.pid}")
    # the watchdog: another session, stdio on /dev/null, no open file but a pipe (and the
    # pidfd of the dumper it watches); nobody's child but init's (started through sh &)
    wd = watchdogs_of(proc.pid)
    assert len(wd) == 1, wd
    w = wd[0]
    ppid = int(Path(f"/proc/{w}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert os.getsid(w) not in (os.getsid(proc.pid), w) and ppid != proc.pid
    fds = watchdog_ready(w)
    assert all(fds[i] == "/dev/null" for i in (0, 1, 2)), fds
    rest = sorted(v.split(":")[0] for k, v in fds.items() if k > 2)
    assert rest == ["anon_inode", "pipe"] and "anon_inode:[pidfd]" in fds.values(), fds
    assert proc.wait(timeout=120) == 0, proc.stderr.read()


def test_tree_dump_killed_threads_run_on_and_recover_cleans(tree):
    """A tree dump has no freezer and no watchdog: SIGKILLed at a step, its seized and
    interrupted threads (registers, signal masks and injected scratch page in place) run on
    untraced by themselves; its partial temporary image and intent stay until ``lxc-cr
    recover`` removes them; a normal dump and restore then work."""
    n = 3
    wl, d, st = launch_threads(tree, "tree-kill", n)
    trace = d / "trace"
    tree.cli("tree", "dump", wl.root, d / "t.img", "--leave-running",
             env={"LXC_CR_FAULT_TRACE": str(trace)})
    names = [line.split(" ", 2)[2] for line in steps(trace)]
    memory = [i + 1 for i, name in enumerate(names) if name.startswith("memory ")]
    holds = [("frozen", names.index("frozen") + 1), ("prepared", names.index("prepared") + 1),
             ("memory", memory[-1]), ("written", names.index("written") + 1)]
    affinity = {t: os.sched_getaffinity(t) for t in tids(wl.root)}
    for what, n_step in holds:
        img = d / f"{what}.img"
        t = d / f"trace-{what}"
        env = dict(os.environ, LXC_CR_FAULT_TRACE=str(t), LXC_CR_FAULT_HOLD=f"dump:{n_step}")
        env.pop("LXC_CR_FAULT", None)
        proc = subprocess.Popen([str(LXC_CR), "tree", "dump", str(wl.root), str(img)], env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        assert wait_trace(t, proc, steps(trace)[n_step - 1].split(" ", 2)[2])
        before = read_state(st)
        proc.kill()
        proc.wait()
        after = wait_changed(st, before, key="main")
        assert_continued(before, after, key="main", what=f"killed at {what}")
        wait_state(st, lambda s: all(int(s[f"count{i}"]) > int(before[f"count{i}"])
                                     for i in range(n)), f"every thread after a kill at {what}")
        assert_running_untraced(wl.root)
        temp = Path(intent.temp_path(str(img), proc.pid))
        mine = [r for r in intent.intents() if r.owner_pid == proc.pid]
        assert len(mine) == 1 and mine[0].temp == str(temp) and not mine[0].freezer
        assert temp.exists() == (what in ("memory", "written")), what
        assert not img.exists()
        r = run(LXC_CR, "recover")
        assert r.returncode == 0, r.stderr
        if temp.name in r.stdout:
            assert f"removed temporary image {temp}" in r.stdout, r.stdout
        assert f"removed intent {mine[0].path}" in r.stdout, r.stdout
        # the dump had pinned every thread to its own CPU (ptrace.Colocation)
        assert f"gave {len(affinity)} threads their CPU affinity back" in r.stdout, r.stdout
        assert {t: os.sched_getaffinity(t) for t in tids(wl.root)} == affinity, what
        assert not temp.exists() and not os.path.exists(mine[0].path)
    last = read_state(st)
    dump_kill(tree, wl.root, d / "final.img")
    tree.restore(d / "final.img")
    assert_continued(last, wait_changed(st, read_state(st), key="main"), key="main",
                     what="restored after the kills")


def test_virsh_save_killed_while_frozen(libvirt_domain, tmp_path):
    """``lxc-cr virsh save`` SIGKILLed with the domain's cgroup frozen: the watchdog thaws
    it, the domain runs on (libvirt still says running), no image is left, and a save and
    restore afterwards work."""
    from test_libvirt_save import counter_domain, state

    from lxc_cr.errors import OperationFailed
    from lxc_cr.runtime.libvirt import init_pid
    dom, count = counter_domain(libvirt_domain, tmp_path, "kill")
    name = dom.name()

    def status_names_init() -> int:   # libvirt's status file can say <init pid='0'/> a while
        try:
            return init_pid(name)
        except OperationFailed:
            return 0
    wait_for(status_names_init, timeout=90, what="libvirt's status file to name the init")
    img = tmp_path / "dom.save"
    trace = tmp_path / "trace"
    env = dict(os.environ, LXC_CR_FAULT_TRACE=str(trace), LXC_CR_FAULT_HOLD="dump:2")
    env.pop("LXC_CR_FAULT", None)
    proc = subprocess.Popen([str(LXC_CR), "virsh", "save", name, str(img)], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    assert wait_trace(trace, proc, "cgroup frozen"), proc.stderr.read()
    recs = [r for r in intent.intents() if r.kind == "libvirt" and r.name == name]
    assert len(recs) == 1 and recs[0].freezer and recs[0].owner_pid == proc.pid
    frozen = recs[0].freezer
    assert intent.freezer_state(frozen) == "FROZEN"
    c0 = count()
    proc.kill()
    proc.wait()
    wait_for(lambda: intent.freezer_state(frozen) == "THAWED", timeout=30,
             what="the watchdog to thaw the domain")
    wait_for(lambda: count() > c0 + 2, what="the domain's counter after the kill")
    assert state(name) == "running"
    assert not os.path.exists(recs[0].path) and not img.exists()
    assert not list(tmp_path.glob(".dom.save.tmp-*"))
    r = run(LXC_CR, "virsh", "save", name, img)
    assert r.returncode == 0, r.stderr
    at = count()
    r = run(LXC_CR, "virsh", "restore", img)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: count() > at, what="the counter after save and restore")
