"""Engine core: single workloads survive ``tree dump`` (default: kill) + ``tree restore``.

Each workload runs as pid 1 of its own pid namespace and reports through a state file.  A
value recorded before the dump must have CONTINUED after the restore: the boot token (random,
drawn once at program start) is the same, and the counter went on past the last value
written before the freeze.
"""

from __future__ import annotations

import hashlib
import os
import random
import time

import pytest

from treeutil import (PYTHON3, WORKLOADS, assert_continued, assert_running_untraced, build,
                      dump_kill, harness_fixture, idents, launch_threads, read_mem,
                      read_state, snapshot, state_int, wait_changed, wait_state)

pytestmark = pytest.mark.integration

tree = harness_fixture()

GAMMA = 0x9E3779B97F4A7C15
M64 = (1 << 64) - 1
EBUSY = 16


def splitmix_word(seed: int, i: int) -> int:
    """Word i of wl_heap's heap: the splitmix64 stream of seed."""
    z = (seed + (i + 1) * GAMMA) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def check_heap_against_seed(heap: bytes, seed: int, samples: int = 4096) -> None:
    words = len(heap) // 8
    idx = [0, 1, words - 1] + random.Random(seed).sample(range(words), samples)
    for i in idx:
        got = int.from_bytes(heap[8 * i:8 * i + 8], "little")
        want = splitmix_word(seed, i)
        assert got == want, f"heap word {i}: {got:#018x}, expected {want:#018x} from the seed"


def maps_layout(pid: int) -> list[tuple]:
    """(start, end, perms, offset, path) of every mapping but [vsyscall]."""
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            path = parts[5].strip() if len(parts) > 5 else ""
            if path == "[vsyscall]":
                continue
            start, end = parts[0].split("-")
            out.append((int(start, 16), int(end, 16), parts[1], parts[2], path))
    return out


# --- 1. 64 MiB of seeded heap -------------------------------------------------------------

def test_heap_64mib_checksum_and_counter_continue(tree):
    seed = 0x5EED_1234_ABCD_0042
    binary = build("wl_heap")
    d = tree.dir("heap")
    st = d / "state"
    wl = tree.launch([binary, st, hex(seed), "64"], ready=lambda: state_int(st, "counter") >= 2)

    s0 = read_state(st)
    assert s0["bad"] == "0" and s0["checksum"] == s0["checksum0"], s0
    addr, words = int(s0["heap"], 16), int(s0["words"])
    assert words * 8 == 64 << 20
    heap = read_mem(wl.root, addr, words * 8)
    check_heap_against_seed(heap, seed)
    sha_before = hashlib.sha256(heap).hexdigest()
    del heap
    snap = snapshot(wl.root)

    dump_kill(tree, wl.root, d / "img")
    last = read_state(st)                  # the last write before the freeze
    root = tree.restore(d / "img")
    after = wait_changed(st, last)

    assert_continued(last, after, what="wl_heap")
    assert after["checksum0"] == s0["checksum0"], "the program's start checksum changed"
    assert after["checksum"] == s0["checksum0"], (
        f"heap checksum after restore {after['checksum']} != {s0['checksum0']} before")
    assert after["bad"] == "0", f"{after['bad']} heap words differ from the seeded stream"
    heap = read_mem(root, addr, words * 8)
    assert hashlib.sha256(heap).hexdigest() == sha_before, "heap bytes differ after restore"
    check_heap_against_seed(heap, seed)
    assert idents(snapshot(root)) == idents(snap)
    assert_running_untraced(root)


# --- 2. four pthreads with __thread counters ------------------------------------------------

def test_threads_tls_and_shared_counters_continue(tree):
    n = 4
    wl, d, st = launch_threads(tree, "threads", n)
    snap = snapshot(wl.root)
    assert len(snap[1].tids) == n + 1, snap[1]
    s0 = read_state(st)
    assert s0["shared"] == s0["sum"], s0
    tids_before = sorted(int(s0[f"tid{i}"]) for i in range(n))
    assert tids_before == sorted(t for t in snap[1].tids if t != 1)

    dump_kill(tree, wl.root, d / "img")
    last = read_state(st)
    root = tree.restore(d / "img")
    after = wait_changed(st, last, key="main")
    assert_continued(last, after, key="main", what="wl_threads main thread")
    after = wait_state(st, lambda s: all(int(s[f"count{i}"]) > int(last[f"count{i}"])
                                         for i in range(n)),
                       "every thread's __thread counter to pass its value at the checkpoint")
    assert after["boot"] == last["boot"]
    assert int(after["shared"]) > int(last["shared"])
    assert after["shared"] == after["sum"], (
        f"shared counter {after['shared']} != sum of per-thread counters {after['sum']}")
    for i in range(n):
        assert after[f"tid{i}"] == last[f"tid{i}"], f"thread {i} changed tid"
        assert after[f"bad{i}"] == "0", f"thread {i}: __thread canary corrupted"
    snap_after = snapshot(root)
    assert idents(snap_after) == idents(snap)
    assert len(snap_after[1].tids) == n + 1
    assert_running_untraced(root)


# --- 4. a Python interpreter with a 1,000,000-entry dict ------------------------------------

def test_python_dict_1m_continues_intact(tree):
    n = 1_000_000
    expected_sum = sum((i * 2654435761 + 12345) & 0xFFFFFFFF for i in range(n))
    d = tree.dir("pydict")
    st = d / "state"
    wl = tree.launch([PYTHON3, WORKLOADS / "wl_pydict.py", st, str(n)],
                     ready=lambda: state_int(st, "counter") >= 1, timeout=120)
    s0 = read_state(st)
    assert s0["ok"] == "1" and int(s0["sum"]) == expected_sum, s0
    snap = snapshot(wl.root)

    dump_kill(tree, wl.root, d / "img", timeout=120)
    last = read_state(st)
    root = tree.restore(d / "img", timeout=120)
    after = wait_changed(st, last, timeout=60)
    assert_continued(last, after, what="wl_pydict.py")
    assert after["ok"] == "1", f"dict verification failed after restore: {after}"
    assert int(after["sum"]) == expected_sum and int(after["len"]) == n, after
    # and it keeps going
    again = wait_changed(st, after, timeout=60)
    assert int(again["counter"]) > int(after["counter"]) and again["ok"] == "1", again
    assert idents(snapshot(root)) == idents(snap)
    assert_running_untraced(root)


# --- 5. static and dynamic binaries ---------------------------------------------------------

@pytest.mark.parametrize("linkage", ["dynamic", "static"])
def test_static_and_dynamic_counter_continue(tree, linkage):
    binary = build("wl_counter", "-static") if linkage == "static" else build("wl_counter")
    d = tree.dir(f"counter-{linkage}")
    st = d / "state"
    wl = tree.launch([binary, st], ready=lambda: state_int(st, "counter") >= 5)
    layout = maps_layout(wl.root)
    has_libc = any("libc.so" in m[4] for m in layout)
    assert has_libc == (linkage == "dynamic"), f"{linkage} build: libc mapped = {has_libc}"
    snap = snapshot(wl.root)

    dump_kill(tree, wl.root, d / "img")
    last = read_state(st)
    pidfile = d / "restored.pid"
    root = tree.restore(d / "img", "--pidfile", pidfile)
    assert pidfile.read_text().strip() == str(root), "--pidfile disagrees with stdout"
    after = wait_changed(st, last)
    assert_continued(last, after, what=f"{linkage} wl_counter")
    assert maps_layout(root) == layout, "the memory layout changed across the checkpoint"
    assert idents(snapshot(root)) == idents(snap)
    assert os.readlink(f"/proc/{root}/exe") == str(binary)
    assert_running_untraced(root)


# --- 6. vdso clock_gettime and rseq sched_getcpu ---------------------------------------------

def test_vdso_clock_and_rseq_getcpu_keep_working(tree):
    binary = build("wl_clock")
    d = tree.dir("clock")
    st = d / "state"
    wl = tree.launch([binary, st], ready=lambda: state_int(st, "counter") >= 5)
    s0 = read_state(st)
    assert int(s0["rseq_start_errno"]) == EBUSY, (
        f"precondition: glibc did not register rseq in wl_clock ({s0})")
    assert s0["bad_rseq"] == "0" and s0["bad_cpu"] == "0", s0
    snap = snapshot(wl.root)

    dump_kill(tree, wl.root, d / "img")
    last = read_state(st)
    mono0, real0 = time.monotonic_ns(), time.time_ns()
    root = tree.restore(d / "img")
    after = wait_changed(st, last)
    after = wait_changed(st, after)          # a full iteration run after the restore
    mono1, real1 = time.monotonic_ns(), time.time_ns()

    assert_continued(last, after, what="wl_clock")
    assert int(after["mono_ns"]) > int(last["mono_ns"])
    assert mono0 <= int(after["mono_ns"]) <= mono1, (
        f"CLOCK_MONOTONIC in the restored task {after['mono_ns']} is not between {mono0} "
        f"and {mono1}: vdso clock broken")
    assert real0 <= int(after["real_ns"]) <= real1, (
        f"CLOCK_REALTIME in the restored task {after['real_ns']} not between {real0} and {real1}")
    assert 0 <= int(after["cpu"]) < os.cpu_count(), f"sched_getcpu() = {after['cpu']}"
    assert after["bad_cpu"] == "0" and after["mono_back"] == "0", after
    assert int(after["rseq_errno"]) == EBUSY and after["bad_rseq"] == "0", (
        f"rseq is not registered in the restored thread (probe errno {after['rseq_errno']}, "
        f"{after['bad_rseq']} failed probes)")
    assert idents(snapshot(root)) == idents(snap)
    assert_running_untraced(root)
