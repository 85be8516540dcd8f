"""lxc_cr.intent without a container: who counts as a dead owner, the record file, stale
temporary images, ``recover`` on records of dead dumps (no freezer: nothing to thaw).

Every path is redirected under tmp_path (INTENT_DIR, the log, the known image dirs)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time

import pytest

from lxc_cr import intent

pytestmark = pytest.mark.unit


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    monkeypatch.setattr(intent, "INTENT_DIR", str(tmp_path / "intent"))
    monkeypatch.setattr(intent, "LOG_DIR", str(tmp_path / "log"))
    monkeypatch.setattr(intent, "LOG_FILE", str(tmp_path / "log" / "recover.log"))
    monkeypatch.setattr(intent, "KNOWN_IMAGE_DIRS", ())
    monkeypatch.setattr(intent.syslog, "syslog", lambda *a: None)
    return tmp_path


def dead_pid() -> tuple[int, int]:
    p = subprocess.Popen(["sleep", "60"])
    start = intent.start_time(p.pid)
    p.kill()
    p.wait()
    return p.pid, start


def record(tmp_path, pid, start, image) -> intent.Intent:
    return intent.Intent(owner_pid=pid, owner_start=start, kind="tree", name=str(pid),
                         freezer="", image=str(image), temp=intent.temp_path(str(image), pid),
                         image_before=None, created=time.time_ns())


def test_a_zombie_is_not_alive():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        deadline = time.monotonic() + 30
        while intent._stat(pid)[0] != "Z":           # exited, not reaped yet
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert intent.start_time(pid) is None
    finally:
        os.waitpid(pid, 0)
    assert intent.start_time(os.getpid()) == intent._stat(os.getpid())[1]


def test_owner_alive_needs_the_same_start_time(tmp_path):
    me = os.getpid()
    rec = record(tmp_path, me, intent.start_time(me), tmp_path / "img")
    assert intent.owner_alive(rec)
    rec.owner_start += 1                              # same pid, another process
    assert not intent.owner_alive(rec)


def test_written_record_is_private_and_loads_back(dirs):
    pid, start = dead_pid()
    rec = record(dirs, pid, start, dirs / "img")
    path = intent.write(rec)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(intent.INTENT_DIR).st_mode & 0o777 == 0o700
    assert json.loads(open(path).read())["temp"] == str(dirs / f".img.tmp-{pid}")
    assert intent.load(path) == rec
    assert [r.path for r in intent.intents()] == [path]


def test_recover_removes_what_dead_dumps_left(dirs):
    pid, start = dead_pid()
    other, _ = dead_pid()
    d = dirs / "images"
    d.mkdir()
    rec = record(dirs, pid, start, d / "img")
    intent.write(rec)
    temps = [d / f".img.tmp-{pid}", d / f".img.tmp-{other}", d / ".other.tmp-1"]
    mine = d / f".img.tmp-{os.getpid()}"             # a live writer's: left alone
    for t in temps + [mine]:
        t.write_bytes(b"partial")
    corrupt = os.path.join(intent.INTENT_DIR, "lxc-x.1.json")
    with open(corrupt, "w") as f:
        f.write("{not json")
    out = io.StringIO()
    assert intent.recover(out) == 0
    lines = out.getvalue().splitlines()
    assert f"tree:{pid}: removed temporary image {temps[0]} (dump by pid {pid} died)" in lines
    assert any(f"removed stale temporary image {temps[1]}" in x for x in lines), lines
    assert any(f"removed intent {corrupt}" in x for x in lines), lines
    assert not any(t.exists() for t in temps[:2]) and mine.exists()
    assert not os.listdir(intent.INTENT_DIR)
    log = open(intent.LOG_FILE).read()
    line = next(x for x in log.splitlines() if f" recover: tree:{pid}: " in x)
    assert f"removed temporary image {temps[0]}; " in line and "; removed intent " in line
    out = io.StringIO()
    assert intent.recover(out) == 0 and out.getvalue() == "nothing to recover\n"


def test_live_owner_left_alone(dirs):
    me = os.getpid()
    rec = record(dirs, me, intent.start_time(me), dirs / "img")
    path = intent.write(rec)
    out = io.StringIO()
    assert intent.recover(out) == 0
    assert out.getvalue() == f"tree:{me}: dump in progress (pid {me}), left alone\n" \
        "nothing to recover\n"
    assert os.path.exists(path)
    assert intent.recover_target("tree", str(me), out=None) == []
    os.unlink(path)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_recover_gives_pinned_threads_their_affinity_back(dirs):
    """A dead dump leaves the threads it pinned (ptrace.Colocation) on one CPU; the intent
    names their own affinity (Held.pinned), and resolving it gives it back, only to the
    same processes (start time); an intent written before the field existed loads."""
    cpus = sorted(os.sched_getaffinity(0))
    p = subprocess.Popen(["sleep", "60"])
    other = subprocess.Popen(["sleep", "60"])
    try:
        pid, start = dead_pid()
        rec = record(dirs, pid, start, dirs / "img")
        intent.write(rec)
        held = intent.Held(rec, -1)
        held.pinned({p.pid: set(cpus), other.pid: set(cpus)})
        on_disk = json.loads(open(rec.path).read())["affinity"]
        assert on_disk[str(p.pid)] == [intent.start_time(p.pid), cpus]
        on_disk[str(other.pid)][0] += 1                  # as if the pid were reused
        data = json.loads(open(rec.path).read())
        data["affinity"] = on_disk
        open(rec.path, "w").write(json.dumps(data))
        for q in (p, other):
            os.sched_setaffinity(q.pid, {cpus[0]})
        out = io.StringIO()
        assert intent.recover(out) == 0
        assert "gave 1 threads their CPU affinity back" in out.getvalue(), out.getvalue()
        assert os.sched_getaffinity(p.pid) == set(cpus)
        assert os.sched_getaffinity(other.pid) == {cpus[0]}

        del data["affinity"]                            # an older lxc-cr's intent
        path = intent.write(record(dirs, pid, start, dirs / "img2"))
        data.update(image=str(dirs / "img2"))
        open(path, "w").write(json.dumps(data))
        assert intent.load(path).affinity == {}
    finally:
        for q in (p, other):
            q.kill()
            q.wait()
