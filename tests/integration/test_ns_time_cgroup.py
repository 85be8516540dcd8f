"""Time namespace offsets and cgroup placement survive ``tree dump`` + ``tree restore``.

* A tree in its own time namespace (``unshare --time --monotonic 86400 --boottime 3600``)
  running tests/workloads/wl_clock.c: the restored root is in a time namespace with the same
  offsets, and the CLOCK_MONOTONIC the workload reads (through the vdso) goes on from its
  checkpoint value: greater than it, and never ahead of the host's clock plus the offset.
* A tree (tests/workloads/wl_tree.c) started in a cgroup made for it below the test's own,
  in the pids, memory (v1) and unified (v2) hierarchies, with process A in ``sub``
  (pids.max 50, memory.limit_in_bytes 64 MiB) and H in ``sub/inner``.  The image is
  restored by a restorer placed in another fresh cgroup after ``sub`` was removed: the
  restored root is in the restorer's cgroup, A and H in ``sub`` and ``sub/inner`` below it
  (read from /proc/PID/cgroup), with the same limits.
* A busybox LXC container whose counter shell sits in a sub-cgroup of the container's pids
  cgroup (pids.max 50): after ``lxc checkpoint --stop`` + ``lxc restore`` it is in that
  sub-cgroup of the cgroup LXC made for the restored container.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import jsonschema
import pytest

from test_lxc_checkpoint import RCS
from treeutil import (LXC_CR, REPO, assert_continued, build, dump_kill, harness_fixture,
                      host_pid_of, read_state, tree_pids, wait_changed, wait_for, wait_state)

pytestmark = pytest.mark.integration

tree = harness_fixture()

MONO_OFF, BOOT_OFF = 86400, 3600
NS = 1_000_000_000


def _offsets(pid: int) -> dict[str, tuple[int, int]]:
    out = {}
    for line in Path(f"/proc/{pid}/timens_offsets").read_text().splitlines():
        name, sec, nsec = line.split()
        out[name] = (int(sec), int(nsec))
    return out


def test_time_namespace_offsets_and_monotonic_clock(tree):
    state = tree.base / "clock.state"
    wl = tree.launch([build("wl_clock"), state],
                     unshare=("--time", "--monotonic", str(MONO_OFF),
                              "--boottime", str(BOOT_OFF)),
                     ready=lambda: state.exists(), what="wl_clock to start")
    wait_state(state, lambda st: int(st.get("counter", 0)) >= 3, "the clock loop")
    want = {"monotonic": (MONO_OFF, 0), "boottime": (BOOT_OFF, 0)}
    assert _offsets(wl.root) == want
    assert os.readlink(f"/proc/{wl.root}/ns/time") != os.readlink("/proc/self/ns/time")
    img = tree.base / "time.img"
    dump_kill(tree, wl.root, img)
    last = read_state(state)
    at_ck = int(last["mono_ns"])
    assert at_ck > MONO_OFF * NS, "the workload does not see the monotonic offset"

    summary = json.loads(tree.cli("inspect", img, "--json").out)
    offs = {o["clock"]: o["offset_sec"] for o in summary["namespaces"]["time"]["offsets"]}
    assert offs == {"monotonic": MONO_OFF, "boottime": BOOT_OFF}

    root = tree.restore(img)
    assert _offsets(root) == want
    assert os.readlink(f"/proc/{root}/ns/time") != os.readlink("/proc/self/ns/time")
    after = wait_changed(state, last)
    host_now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    assert_continued(last, after, what="wl_clock")
    mono = int(after["mono_ns"])
    assert mono > at_ck, f"CLOCK_MONOTONIC went back: {at_ck} at the checkpoint, {mono} after"
    assert mono <= host_now + MONO_OFF * NS, (
        f"CLOCK_MONOTONIC {mono} is ahead of the host's {host_now} plus the offset")
    assert after["mono_back"] == "0"


# --------------------------------------------------------------------------------------------
# cgroups

HIERARCHIES = {"pids": "/sys/fs/cgroup/pids", "memory": "/sys/fs/cgroup/memory",
               "": "/sys/fs/cgroup/unified"}


def _cgroup_paths(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        out[ctrls] = path
    return out


def _enter(dirs: dict[str, Path]):
    """A preexec_fn putting the child into ``dirs`` (one cgroup per hierarchy)."""
    def enter():
        for d in dirs.values():
            (d / "cgroup.procs").write_text(str(os.getpid()))
    return enter


@pytest.fixture
def cgroups(test_name):
    """make(label) -> {hierarchy: a new cgroup below this test's own}; all removed at the
    end (their processes are killed by the tree fixture, torn down first)."""
    me = _cgroup_paths(os.getpid())
    have = {h: m for h, m in HIERARCHIES.items()
            if os.path.exists(f"{m}/cgroup.procs") and h in me}
    if set(have) != set(HIERARCHIES):
        pytest.fail(f"cgroup hierarchies missing: {set(HIERARCHIES) - set(have)}",
                    pytrace=False)
    made: list[Path] = []

    def make(label: str) -> dict[str, Path]:
        name = test_name(label)
        out = {}
        for h, m in have.items():
            d = Path(f"{m}{me[h].rstrip('/')}/{name}")
            d.mkdir()
            made.append(d)
            out[h] = d
        return out
    yield make
    errors = []
    for d in reversed(made):
        subs = [p for p in d.rglob("*") if p.is_dir()]
        for sub in sorted(subs, key=lambda p: -len(p.parts)):
            _rmdir(sub, errors)
        _rmdir(d, errors)
    if errors:
        pytest.fail("cgroup teardown: " + "; ".join(errors), pytrace=False)


def _rmdir(d: Path, errors: list) -> None:
    def gone():
        try:
            d.rmdir()
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True
    try:
        wait_for(gone, f"{d} to be empty and removed")
    except AssertionError as e:
        errors.append(str(e))


def test_cgroup_placement_and_limits(cgroups, tree):
    t1 = cgroups("cg")
    for d in t1.values():
        (d / "sub" / "inner").mkdir(parents=True)
    (t1["pids"] / "sub" / "pids.max").write_text("50")
    (t1["memory"] / "sub" / "memory.limit_in_bytes").write_text(str(64 << 20))
    d = tree.dir("tree")
    wl = tree.launch([build("wl_tree"), d], preexec_fn=_enter(t1),
                     ready=lambda: all((d / f"state.{r}").exists() for r in "RAGHJ"),
                     what="every process of wl_tree writing")
    pids = {r: int(wait_state(d / f"state.{r}", lambda st: "pid" in st, r)["pid"])
            for r in "RAGHJ"}
    hosts = {r: host_pid_of(wl.root, p) for r, p in pids.items()}
    for h, base in t1.items():
        (base / "sub" / "cgroup.procs").write_text(str(hosts["A"]))
        (base / "sub" / "inner" / "cgroup.procs").write_text(str(hosts["H"]))
    rel = {h: _cgroup_paths(hosts["R"])[h] for h in t1}

    img = tree.base / "cg.img"
    last = {r: read_state(d / f"state.{r}") for r in "RAGHJ"}
    dump_kill(tree, wl.root, img)
    errors: list[str] = []
    for base in t1.values():                      # the restore must create them again
        for sub in ("sub/inner", "sub"):
            _rmdir(base / sub, errors)
    assert not errors, errors

    doc = json.loads(tree.cli("inspect", img, "--json").out)
    schema = json.loads((REPO / "schemas" / "inspect.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(doc)
    summary = doc["namespaces"]["cgroup"]
    placed = {t["pid"]: {c["hierarchy"]: c["path"] for c in t["cgroups"]}
              for t in summary["tasks"]}
    assert placed == {pids["A"]: dict.fromkeys(t1, "sub"),
                      pids["H"]: dict.fromkeys(t1, "sub/inner")}
    limits = {(x["hierarchy"], x["path"], x["file"]): x["value"] for x in summary["limits"]}
    assert limits[("pids", "sub", "pids.max")] == "50"
    assert limits[("memory", "sub", "memory.limit_in_bytes")] == str(64 << 20)

    t2 = cgroups("cg2")
    failed = tree.cli("tree", "restore", img, env={"LXC_CR_FAULT": "restore:1"},
                      preexec_fn=_enter(t2))          # fails after the cgroups were made
    assert failed.rc == 1, failed.describe()
    assert not [h for h, base in t2.items() if (base / "sub").exists()], \
        "a failed restore left the sub-cgroups it created"
    root = tree.restore(img, preexec_fn=_enter(t2))
    for r in "RAGHJ":
        assert_continued(last[r], wait_changed(d / f"state.{r}", last[r]), what=r)
    restored = {r: host_pid_of(root, p) for r, p in pids.items()}
    for h, base in t2.items():
        prefix = _cgroup_paths(os.getpid())[h].rstrip("/") + "/" + base.name
        got = {r: _cgroup_paths(p)[h] for r, p in restored.items()}
        assert got == {"R": prefix, "G": prefix, "J": prefix, "A": f"{prefix}/sub",
                       "H": f"{prefix}/sub/inner"}, (h, got, rel[h])
    assert (t2["pids"] / "sub" / "pids.max").read_text().strip() == "50"
    assert (t2["pids"] / "sub" / "inner" / "pids.max").read_text().strip() == "max"
    assert (t2["memory"] / "sub" / "memory.limit_in_bytes").read_text().strip() == \
        str(64 << 20)


def _counter_pid(init: int) -> int:
    """Host pid of the container's counter shell (its command line names /tmp/counter)."""
    for h in tree_pids(init):
        try:
            if b"/tmp/counter" in Path(f"/proc/{h}/cmdline").read_bytes():
                return h
        except FileNotFoundError:
            continue
    raise AssertionError("no counter shell in the container")


def _lxc_counter(lxc_container, label: str, config: str = ""):
    """A started busybox container running syslogd and a counter shell (rcS of
    test_lxc_checkpoint), ``config`` lines appended to its config; (container, counter)."""
    ct = lxc_container(label)
    if config:
        with open(Path(ct.lxcpath) / ct.name / "config", "a") as f:
            f.write(config)
    root = Path(ct.lxcpath) / ct.name / "rootfs"
    (root / "etc" / "init.d" / "rcS").write_text(RCS)
    ct.start()
    counter = root / "tmp" / "counter"
    wait_for(lambda: counter.exists() and counter.read_text().strip(), "the counter")
    return ct, counter


def _lxc_stop_restore(ct, counter: Path, d: Path) -> None:
    """``lxc checkpoint --stop`` then ``lxc restore``; the counter goes on."""
    for argv in (["checkpoint", ct.name, d, "--stop"], ["restore", ct.name, d]):
        r = subprocess.run([LXC_CR, "lxc", *argv, "-P", ct.lxcpath], capture_output=True,
                           text=True, stdin=subprocess.DEVNULL, timeout=120)
        assert r.returncode == 0, f"lxc {argv[0]}: {r.stderr}"
        if argv[0] == "checkpoint":
            at_ck = int(counter.read_text().strip() or 0)
    wait_for(lambda: int(counter.read_text().strip() or 0) > at_ck, "the counter to go on")


def test_lxc_container_sub_cgroup(lxc_container, tmp_path):
    """In an LXC container, a process moved to a sub-cgroup of the container's pids cgroup
    (pids.max 50) is there again after ``lxc checkpoint --stop`` + ``lxc restore``, below
    the cgroup LXC made for the restored container."""
    ct, counter = _lxc_counter(lxc_container, "cg")
    init = ct.init_pid()
    base = Path(HIERARCHIES["pids"] + _cgroup_paths(init)["pids"])
    (base / "sub").mkdir()
    (base / "sub" / "pids.max").write_text("50")
    (base / "sub" / "cgroup.procs").write_text(str(_counter_pid(init)))
    _lxc_stop_restore(ct, counter, tmp_path / "ckpt")
    init = ct.init_pid()
    new_base = _cgroup_paths(init)["pids"]
    assert _cgroup_paths(_counter_pid(init))["pids"] == f"{new_base}/sub"
    assert Path(f"{HIERARCHIES['pids']}{new_base}/sub/pids.max").read_text().strip() == "50"
    ct.stop()


def test_lxc_container_time_namespace(lxc_container, tmp_path):
    """An LXC container in its own time namespace (lxc.time.offset.*): checkpointed, and
    restored into the time namespace LXC makes again from the same configuration."""
    ct, counter = _lxc_counter(lxc_container, "time", f"lxc.time.offset.monotonic = "
                               f"{MONO_OFF}s\nlxc.time.offset.boot = {BOOT_OFF}s\n")
    want = {"monotonic": (MONO_OFF, 0), "boottime": (BOOT_OFF, 0)}
    assert _offsets(ct.init_pid()) == want
    _lxc_stop_restore(ct, counter, tmp_path / "ckpt")
    init = ct.init_pid()
    assert _offsets(init) == want
    own = os.readlink(f"/proc/{init}/ns/time")
    for p in tree_pids(init):
        try:
            ns = os.readlink(f"/proc/{p}/ns/time")
        except FileNotFoundError:
            continue                      # a short-lived process of the shell loop (sleep)
        assert ns == own, f"pid {p} is in another time namespace"
    r = ct.attach("cat", "/proc/uptime")                 # boottime, in the namespace
    assert r.returncode == 0, r.stderr
    host_up = float(Path("/proc/uptime").read_text().split()[0])
    assert float(r.stdout.split()[0]) >= host_up + BOOT_OFF - 60, r.stdout
    ct.stop()
