"""Soak: 100 consecutive ``lxc-checkpoint -s`` / ``lxc-checkpoint -r`` cycles of a busybox
LXC container whose rcS runs a counter loop (not part of ``make test``; ``make soak``).

Every cycle must succeed, and the counter must continue: the value at the checkpoint is not
below the previous cycle's, and after the restore it goes on from there (a restarted
container would count from 1 again).  The time of each cycle is printed (with ``-s``) and
written to tests/soak/results/soak-lxc-<UTC time>.json with min/median/max.
``LXC_CR_SOAK_CYCLES=N`` runs another number of cycles.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from test_lxc_checkpoint import VENV_BIN, counter, counter_container, run, wait_for  # noqa: E402

pytestmark = pytest.mark.soak

CYCLES = int(os.environ.get("LXC_CR_SOAK_CYCLES", "100"))
RESULTS = Path(__file__).resolve().parent / "results"


def cycle(ct, d: Path, last: int) -> dict:
    base = [str(VENV_BIN / "lxc-checkpoint"), "-n", ct.name, "-P", ct.lxcpath, "-D", str(d)]
    t0 = time.monotonic()
    r = run(*base, "-s")
    t1 = time.monotonic()
    if r.returncode != 0:
        return dict(ok=False, error=f"checkpoint: {r.stderr.strip()}", checkpoint_s=t1 - t0)
    at = counter(ct) or last            # empty: stopped between truncation and write
    if at < last:
        return dict(ok=False, error=f"counter went back at the checkpoint: {last} -> {at}")
    r = run(*base, "-r")
    t2 = time.monotonic()
    if r.returncode != 0:
        return dict(ok=False, error=f"restore: {r.stderr.strip()}", checkpoint_s=t1 - t0,
                    restore_s=t2 - t1)
    try:
        after = wait_for(lambda: counter(ct) > at and counter(ct), timeout=60,
                         what="the counter to go on")
    except AssertionError as e:
        return dict(ok=False, error=str(e))
    t3 = time.monotonic()
    return dict(ok=True, counter_at_checkpoint=at, counter_after_restore=after,
                checkpoint_s=round(t1 - t0, 3), restore_s=round(t2 - t1, 3),
                cycle_s=round(t3 - t0, 3))


def test_soak_lxc_checkpoint_restore_cycles(lxc_container, tmp_path):
    ct = counter_container(lxc_container, "soak")
    d = tmp_path / "ckpt"
    last = counter(ct)
    cycles = []
    for n in range(1, CYCLES + 1):
        res = dict(cycle=n, **cycle(ct, d, last))
        cycles.append(res)
        print(f"soak cycle {n:3d}: " + (f"{res['cycle_s']:.3f} s (checkpoint "
              f"{res['checkpoint_s']:.3f} s, restore {res['restore_s']:.3f} s, counter "
              f"{res['counter_at_checkpoint']} -> {res['counter_after_restore']})"
              if res["ok"] else f"FAILED: {res['error']}"), flush=True)
        if not res["ok"]:
            break                       # the container's state is unknown from here
        last = res["counter_after_restore"]
    times = [c["cycle_s"] for c in cycles if c["ok"]]
    failures = sum(1 for c in cycles if not c["ok"])
    summary = dict(cycles=len(cycles), wanted=CYCLES, failures=failures,
                   min_s=min(times, default=None),
                   median_s=round(statistics.median(times), 3) if times else None,
                   max_s=max(times, default=None))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"soak-lxc-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(dict(summary=summary, kernel=os.uname().release,
                                   cycles=cycles), indent=1) + "\n")
    print(f"soak summary: {json.dumps(summary)} ({out})")
    ct.stop()
    assert failures == 0 and len(cycles) == CYCLES, summary
