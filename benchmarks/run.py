#!/usr/bin/env python3
"""lxc-cr benchmarks: every figure as a ratio against a raw copy measured in the same run.

    make bench                          (as root; all benchmarks, a few minutes)
    .venv/bin/python benchmarks/run.py [--quick] [--only NAME ...] [--reps N] [--profile]

Raw baselines (plain Python, the same bytes):
  dump     the workload is stopped (SIGSTOP), its resident anonymous pages are found with the
           PAGEMAP_SCAN ioctl and copied from /proc/PID/mem into a file in the image
           directory with 64 MiB preadv/write calls, then fsync;
  restore  a second workload maps the same size without touching it and is stopped; the raw
           file is read back and written into it through /proc/PID/mem with pwritev.
lxc-cr figures are the CLI's wall time (`lxc-cr tree dump PID IMAGE` to the tree killed,
`lxc-cr tree restore IMAGE` to the tree running) and the engine's own --print-stats.
Before each timed step a file of about twice the workload is written and deleted in the image
directory: these machines hand freed memory back to their host, and the first write into
fresh memory is slow.  Medians of --reps runs.  Results: a table on stdout and JSON in
benchmarks/results/ (latest.json and one file per run).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
LXC_CR = str(REPO / ".venv" / "bin" / "lxc-cr")
LXC_CHECKPOINT = str(REPO / ".venv" / "bin" / "lxc-checkpoint")
CHUNK = 64 << 20

_libc = ctypes.CDLL(None, use_errno=True)


# --- helpers -----------------------------------------------------------------------------

def build() -> str:
    out = HERE / "build" / "bench_mem"
    src = HERE / "bench_mem.c"
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        out.parent.mkdir(exist_ok=True)
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(out), str(src)], check=True)
    return str(out)


def warm(directory: Path, size: int) -> None:
    """Write and delete a file larger than the workload (fresh memory is slow here): the
    workload's size again on top (at most 2 GiB), for the image's page cache and the
    dumper's own memory.  With only 128 MiB on top, the first step that needed more than
    the warmed memory paid for it: a sparse dump after the raw copy, whose file was still
    cached, took 1.4-1.7 s instead of 0.6-0.7 s."""
    path = directory / "warm.tmp"
    buf = b"\xa5" * CHUNK
    with open(path, "wb") as f:
        for _ in range((size + min(size, 2 << 30)) // CHUNK + 2):
            f.write(buf)
        f.flush()
        os.fsync(f.fileno())
    path.unlink()


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


class Workload:
    """bench_mem as pid 1 of its own pid namespace (unshare --pid --fork --mount-proc)."""

    def __init__(self, binary: str, args: list, work: Path):
        self.ready = work / "ready"
        if self.ready.exists():
            self.ready.unlink()
        self.unshare = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", binary, str(self.ready),
             *map(str, args)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 600
        while not self.ready.exists():
            if self.unshare.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"bench: workload {args} did not start")
            time.sleep(0.02)
        fields = dict(kv.split("=") for kv in self.ready.read_text().split())
        self.addr, self.bytes = int(fields["addr"], 16), int(fields["bytes"])
        self.root = children(self.unshare.pid)[0]

    def pids(self) -> list[int]:
        out, todo = [], [self.root]
        while todo:
            p = todo.pop()
            out.append(p)
            todo.extend(children(p))
        return out

    def anon_bytes(self) -> int:
        total = 0
        for p in self.pids():
            try:
                with open(f"/proc/{p}/smaps_rollup") as f:
                    for line in f:
                        if line.startswith("Anonymous:"):
                            total += int(line.split()[1]) * 1024
            except (ProcessLookupError, FileNotFoundError):
                pass                      # a short-lived process (a container's sleep)
        return total

    def kill(self) -> None:
        for p in self.pids():
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(self.unshare.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.unshare.wait()
        reap()


def reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_tree(root: int) -> None:
    todo, seen = [root], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo.extend(children(p))
    for p in seen:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    while any(os.path.exists(f"/proc/{p}") and _state(p) != "Z" for p in seen):
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    reap()


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


def anon_ranges(pid: int) -> list[tuple[int, int]]:
    """(start, end) of the private writable anonymous mappings of pid."""
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 5 and parts[1].startswith("rw") and parts[1][3] == "p" \
                    and (len(parts) == 5 or parts[5] in ("[heap]", "[stack]")):
                a, b = (int(x, 16) for x in parts[0].split("-"))
                out.append((a, b))
    return out


def raw_dump(wl: Workload, path: Path) -> float:
    """Stop the tree, copy every resident anonymous page to path, fsync; seconds."""
    from lxc_cr.kernel import pagemap
    t0 = time.monotonic()
    pids = []
    for p in wl.pids():
        try:
            os.kill(p, signal.SIGSTOP)
            pids.append(p)
        except ProcessLookupError:
            pass                          # a short-lived process (a container's sleep)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "wb") as out:
        for p in pids:
            try:
                mem = os.open(f"/proc/{p}/mem", os.O_RDONLY)
                pm = os.open(f"/proc/{p}/pagemap", os.O_RDONLY)
                ranges = anon_ranges(p)
            except OSError:
                continue                  # exited (a container's short-lived sleep)
            try:
                for a, b in ranges:
                    runs, _ = pagemap.data_runs(pm, a, b, private_file=False)
                    for first, count in runs:
                        off, left = a + first * 4096, count * 4096
                        while left:
                            n = os.preadv(mem, [view[:min(left, CHUNK)]], off)
                            out.write(view[:n])
                            off += n
                            left -= n
            finally:
                os.close(mem)
                os.close(pm)
        out.flush()
        os.fsync(out.fileno())
    t = time.monotonic() - t0
    for p in pids:
        try:
            os.kill(p, signal.SIGCONT)
        except ProcessLookupError:
            pass
    return t


def raw_restore(binary: str, size_mib: int, path: Path, work: Path) -> float:
    """Write the raw file into a stopped process that mapped the same size; seconds."""
    wl = Workload(binary, ["reserve", size_mib], work)
    os.kill(wl.root, signal.SIGSTOP)
    try:
        warm(work, wl.bytes)
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        t0 = time.monotonic()
        mem = os.open(f"/proc/{wl.root}/mem", os.O_RDWR)
        try:
            with open(path, "rb") as f:
                off, limit = wl.addr, wl.addr + wl.bytes
                while off < limit:
                    n = f.readinto(view)
                    if not n:
                        break
                    n = min(n, limit - off)
                    os.pwritev(mem, [view[:n]], off)
                    off += n
        finally:
            os.close(mem)
        return time.monotonic() - t0
    finally:
        wl.kill()


def cli(*args, env=None) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.monotonic()
    r = subprocess.run([*map(str, args)], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, env=env)
    t = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"bench: {' '.join(map(str, args))} failed ({r.returncode}): "
                         f"{r.stderr.strip()}")
    return t, r


def med(xs):
    return statistics.median(xs) if xs else None


# --- benchmarks ----------------------------------------------------------------------------

def bench_tree(name, binary, args, size_hint, work: Path, reps: int, compress=None,
               raw_restore_mib: int | None = None) -> dict:
    """Dump and restore of one workload kind, with the raw baselines in the same run."""
    rows = {"raw_dump": [], "dump": [], "raw_restore": [], "restore": [], "stats_dump": [],
            "stats_restore": [], "image_bytes": [], "anon_bytes": []}
    img = work / "bench.img"
    raw = work / "raw.bin"
    for _ in range(reps):
        wl = Workload(binary, args, work)
        try:
            rows["anon_bytes"].append(wl.anon_bytes())
            warm(work, size_hint)
            rows["raw_dump"].append(raw_dump(wl, raw))
            warm(work, size_hint)
            extra = ["--compress", compress] if compress else []
            t, r = cli(LXC_CR, "tree", "dump", wl.root, img, "--print-stats", *extra)
            rows["dump"].append(t)
            rows["stats_dump"].append(json.loads(r.stdout.strip().splitlines()[-1]))
            rows["image_bytes"].append(img.stat().st_size)
        finally:
            wl.kill()
        if raw_restore_mib:
            rows["raw_restore"].append(raw_restore(binary, raw_restore_mib, raw, work))
        warm(work, size_hint)
        t, r = cli(LXC_CR, "tree", "restore", img, "--print-stats")
        rows["restore"].append(t)
        st = json.loads(r.stdout.strip().splitlines()[-1])
        rows["stats_restore"].append(st)
        kill_tree(int(st["root_host_pid"]))
        img.unlink()
        raw.unlink()
    return summarize(name, rows)


def bench_sparse_pair(binary, work: Path, reps: int) -> list[dict]:
    """The same 655 MiB written densely and spread over a 64 GiB sparse mapping, run in
    alternation (dense, sparse, dense, ...) so that both see the same phases of this
    machine's noisy page cache and disk; what the sparse mapping adds is the median of the
    differences of each pair."""
    runs = {"sparse-dense-655M": (["dense", 656], 656), "sparse-64G-1pct": (["sparse", 64, 1],
                                                                           None)}
    rows = {name: None for name in runs}
    for _ in range(reps):
        for name, (args, raw_mib) in runs.items():
            one = bench_tree(name, binary, args, 656 << 20, work, 1,
                             raw_restore_mib=raw_mib)["runs"]
            if rows[name] is None:
                rows[name] = one
            else:
                for k, v in one.items():
                    rows[name][k].extend(v)
    dense, sparse = (summarize(name, rows[name]) for name in runs)
    pairs = zip(sparse["runs"]["dump"], dense["runs"]["dump"])
    sparse["sparse_adds_s"] = med([s - d for s, d in pairs])
    eng = zip(sparse["runs"]["stats_dump"], dense["runs"]["stats_dump"])
    sparse["sparse_adds_engine_s"] = med([(s["freezing_time"] + s["frozen_time"]
                                           - d["freezing_time"] - d["frozen_time"]) / 1e6
                                          for s, d in eng])
    return [dense, sparse]


def summarize(name: str, rows: dict) -> dict:
    out = {"name": name, "runs": rows}
    for k in ("raw_dump", "dump", "raw_restore", "restore"):
        out[k + "_s"] = med(rows[k])
    if out["raw_dump_s"] and out["dump_s"]:
        out["dump_ratio"] = out["dump_s"] / out["raw_dump_s"]
        eng = [(s["freezing_time"] + s["frozen_time"]) / 1e6 for s in rows["stats_dump"]]
        out["dump_engine_s"] = med(eng)
        out["dump_engine_ratio"] = med(eng) / out["raw_dump_s"]
    if out["raw_restore_s"] and out["restore_s"]:
        out["restore_ratio"] = out["restore_s"] / out["raw_restore_s"]
        eng = [s["restore_time"] / 1e6 for s in rows["stats_restore"] if "restore_time" in s]
        if eng:
            out["restore_engine_s"] = med(eng)
            out["restore_engine_ratio"] = med(eng) / out["raw_restore_s"]
    if rows["image_bytes"] and rows["anon_bytes"]:
        out["image_over_anon"] = med(rows["image_bytes"]) / med(rows["anon_bytes"])
    return out


def bench_lxc(work: Path, reps: int) -> dict:
    """A busybox LXC container (template config unchanged, a counter loop in rcS):
    `lxc-checkpoint -s` to killed, `lxc-checkpoint -r` to running, CLI wall time."""
    name = f"lxccr-test-{os.getpid()}-bench"
    rcs = ("#!/bin/sh\n/bin/syslogd\n/bin/sh -c 'i=0; while true; do i=$((i+1)); "
           "echo $i > /tmp/counter; sleep 0.1; done' </dev/null >/dev/null 2>&1 &\n")
    script = str(REPO / "integration" / "lxc-container.sh")
    subprocess.run([script, "create", name], check=True, capture_output=True)
    rows = {"raw_dump": [], "dump": [], "restore": [], "stats_dump": [], "image_bytes": [],
            "anon_bytes": [], "page_bytes": []}
    try:
        lxcpath = subprocess.run(["lxc-config", "lxc.lxcpath"], capture_output=True,
                                 text=True, check=True).stdout.strip()
        Path(lxcpath, name, "rootfs", "etc", "init.d", "rcS").write_text(rcs)
        subprocess.run([script, "start", name], check=True, capture_output=True)
        time.sleep(1)
        d = work / "lxc"
        for _ in range(reps):
            init = int(subprocess.run(["lxc-info", "-n", name, "-pH"], capture_output=True,
                                      text=True, check=True).stdout.strip())
            wl = Workload.__new__(Workload)
            wl.root = init
            rows["anon_bytes"].append(wl.anon_bytes())
            rows["raw_dump"].append(raw_dump(wl, work / "raw.bin"))
            (work / "raw.bin").unlink()
            shutil.rmtree(d, ignore_errors=True)
            t, _ = cli(LXC_CHECKPOINT, "-n", name, "-D", d, "-s")
            rows["dump"].append(t)
            rows["image_bytes"].append(sum(f.stat().st_size for f in d.iterdir()
                                           if f.name.endswith(".img")))
            rows["page_bytes"].append(page_bytes(d / "lxc-cr.img"))
            t, _ = cli(LXC_CHECKPOINT, "-n", name, "-D", d, "-r")
            rows["restore"].append(t)
            time.sleep(0.5)
        rows["frozen"] = [frozen_size(name, d) for _ in range(3)]
    finally:
        subprocess.run([script, "destroy", name], capture_output=True)
    out = {"name": "lxc-busybox", "runs": rows, "dump_s": med(rows["dump"]),
           "restore_s": med(rows["restore"]), "raw_dump_s": med(rows["raw_dump"])}
    out["dump_ratio"] = out["dump_s"] / out["raw_dump_s"]
    out["image_over_anon"] = med([r["image_bytes"] / r["anon_bytes"] for r in rows["frozen"]])
    out["image_over_anon_running"] = med(rows["image_bytes"]) / med(rows["anon_bytes"])
    out["image_over_pages"] = med([i / p for i, p in zip(rows["image_bytes"],
                                                         rows["page_bytes"])])
    return out


def frozen_size(name: str, d: Path) -> dict:
    """The image size against the container's resident anonymous memory, both of one state:
    the container is frozen (``lxc-freeze``), measured, then checkpointed (the dump freezes
    it again, which changes nothing) and restored; untimed.  Measured while it runs, the
    memory is of a moment earlier than the dump's: the counter loop starts a new ``sleep``
    every 100 ms, and a measurement may see none, or one still starting."""
    init = int(subprocess.run(["lxc-info", "-n", name, "-pH"], capture_output=True,
                              text=True, check=True).stdout.strip())
    shutil.rmtree(d, ignore_errors=True)
    subprocess.run(["lxc-freeze", "-n", name], check=True, capture_output=True)
    wl = Workload.__new__(Workload)
    wl.root = init
    anon = wl.anon_bytes()
    cli(LXC_CHECKPOINT, "-n", name, "-D", d, "-s")
    out = {"anon_bytes": anon, "image_bytes": (d / "lxc-cr.img").stat().st_size,
           "page_bytes": page_bytes(d / "lxc-cr.img")}
    cli(LXC_CHECKPOINT, "-n", name, "-D", d, "-r")
    time.sleep(0.5)
    return out


def page_bytes(image: Path) -> int:
    """Bytes of the page blocks an image holds: the memory it took from its processes, at
    the moment of the dump (the anonymous memory measured before each dump is of a moment
    earlier: the busybox counter loop's `sleep` is another process by then)."""
    from lxc_cr.image.reader import ImageReader
    with ImageReader(image) as r:
        return sum(o.block.length for _k, o in r.records("pages"))


def profile_dump(binary: str, work: Path, mib: int) -> str:
    """cProfile of an in-process dump of a MIB workload: the top functions by own time."""
    import cProfile
    import io
    import pstats

    from lxc_cr.dump import dump_tree
    wl = Workload(binary, ["dense", mib], work)
    try:
        warm(work, wl.bytes)
        prof = cProfile.Profile()
        prof.enable()
        dump_tree(wl.root, str(work / "prof.img"))
        prof.disable()
    finally:
        wl.kill()
        (work / "prof.img").unlink(missing_ok=True)
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(12)
    return s.getvalue()


# --- main ------------------------------------------------------------------------------------

def fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes only (64 MiB, 1 GiB "
                    "sparse, 20 processes), one run each")
    ap.add_argument("--only", nargs="*", help="benchmark names to run")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", default="/var/lib/lxc-cr/bench", help="image directory")
    ap.add_argument("--profile", action="store_true", help="also profile a 1 GiB dump")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench: run as root", file=sys.stderr)
        return 2
    _libc.prctl(36, 1, 0, 0, 0)          # PR_SET_CHILD_SUBREAPER: restored trees are ours
    work = Path(a.dir)
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o700)
    binary = build()
    reps = 1 if a.quick else a.reps
    G = 1 << 30
    plan = [
        ("mem-64M", lambda: bench_tree("mem-64M", binary, ["dense", 64], 64 << 20, work, reps,
                                       raw_restore_mib=64)),
        ("mem-1G", lambda: bench_tree("mem-1G", binary, ["dense", 1024], G, work, reps,
                                      raw_restore_mib=1024)),
        ("mem-1G-zstd", lambda: bench_tree("mem-1G-zstd", binary, ["dense", 1024], G, work,
                                           1, compress="zstd", raw_restore_mib=1024)),
        ("mem-4G", lambda: bench_tree("mem-4G", binary, ["dense", 4096], 4 * G, work,
                                      max(1, reps // 2), raw_restore_mib=4096)),
        # the same touched bytes (1 % of 64 GiB = 655 MiB) dense and inside a sparse mapping
        ("sparse-64G-1pct", lambda: bench_sparse_pair(binary, work, max(reps, 9))),
        ("tree-100", lambda: bench_tree("tree-100", binary, ["tree", 100, 1], 100 << 20, work,
                                        reps)),
        ("lxc-busybox", lambda: bench_lxc(work, reps if a.quick else max(reps, 7))),
    ]
    if a.quick:
        plan = [
            ("mem-64M", plan[0][1]),
            ("sparse-64G-1pct", lambda: bench_tree("sparse-64G-1pct", binary,
                                                   ["sparse", 64, 1], 656 << 20, work, 1)),
            ("tree-20", lambda: bench_tree("tree-20", binary, ["tree", 20, 1], 20 << 20,
                                           work, 1)),
        ]
    results = []
    for name, fn in plan:
        if a.only and name not in a.only:
            continue
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        got = fn()
        results.extend(got if isinstance(got, list) else [got])
    dense = {r["name"]: r for r in results}
    machine = {"kernel": platform.release(), "cpus": os.cpu_count(),
               "cpu": _cpu_model(), "mem_gib": round(os.sysconf("SC_PHYS_PAGES")
                                                      * os.sysconf("SC_PAGE_SIZE") / G, 1),
               "python": platform.python_version()}
    print(f"machine: {machine}")
    print(f"{'benchmark':<20}{'raw dump':>10}{'dump':>9}{'ratio':>7}{'engine':>8}"
          f"{'raw rest':>10}{'restore':>9}{'ratio':>7}{'engine':>8}{'img/anon':>10}")
    for r in results:
        print(f"{r['name']:<20}{fmt(r.get('raw_dump_s')):>10}{fmt(r.get('dump_s')):>9}"
              f"{fmt(r.get('dump_ratio'), '.2f'):>7}{fmt(r.get('dump_engine_ratio'), '.2f'):>8}"
              f"{fmt(r.get('raw_restore_s')):>10}{fmt(r.get('restore_s')):>9}"
              f"{fmt(r.get('restore_ratio'), '.2f'):>7}"
              f"{fmt(r.get('restore_engine_ratio'), '.2f'):>8}"
              f"{fmt(r.get('image_over_anon'), '.4f'):>10}")
    if "sparse_adds_s" in dense.get("sparse-64G-1pct", {}):
        sp = dense["sparse-64G-1pct"]
        print(f"sparse 64 GiB mapping adds {sp['sparse_adds_s'] * 1000:.0f} ms (engine: "
              f"{sp['sparse_adds_engine_s'] * 1000:.0f} ms) to the dump of the same 655 MiB "
              f"touched densely: medians of {len(sp['runs']['dump'])} alternating pairs")
    for r in results:
        if r["name"] == "lxc-busybox":
            fr = r["runs"]["frozen"]
            print(f"lxc-busybox: img/anon measured on the frozen container "
                  f"{r['image_over_anon']:.4f} (anonymous memory "
                  f"{[f['anon_bytes'] for f in fr]}, page data in the image "
                  f"{[f['page_bytes'] for f in fr]} bytes); measured while running, before "
                  f"each timed dump: {r['image_over_anon_running']:.4f}; image / its own "
                  f"page data in the timed runs {r['image_over_pages']:.4f}")
        if r["name"].endswith("zstd"):
            st = r["runs"]["stats_dump"][0]
            mb = r["runs"]["anon_bytes"][0] / 1e6
            print(f"zstd: {mb / r['dump_s']:.0f} MB/s dump wall, image/anon "
                  f"{r['image_over_anon']:.3f} (incompressible xorshift data), "
                  f"pages {st['pages_written']}")
    prof = profile_dump(binary, work, 1024) if a.profile else None
    if prof:
        print(prof)
    res_dir = HERE / "results"
    res_dir.mkdir(exist_ok=True)
    doc = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine,
           "results": results, "profile": prof}
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    for p in (res_dir / f"bench-{stamp}.json", res_dir / "latest.json"):
        p.write_text(json.dumps(doc, indent=1, sort_keys=True))
    print(f"results: {res_dir / 'latest.json'}")
    return 0


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


if __name__ == "__main__":
    sys.exit(main())
