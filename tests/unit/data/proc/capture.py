"""Rebuild the fake /proc tree beside this file from live processes (run as root).

    .venv/bin/python tests/unit/data/proc/capture.py

Builds fixture.c, runs it, and copies its /proc files (and those of its thread, its
zombie and live children, and kthreadd) into PID directories here; symlinks (fd/, ns/,
exe, cwd, root) are stored as symlinks with the kernel's targets.  Writes pids.json with
the pids used, which test_procfs.py reads.  Then it kills the fixture.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = ("stat", "status", "maps", "smaps", "limits", "auxv", "personality", "timers",
         "mountinfo")
TASK_FILES = ("stat", "status", "children")
LINKS = ("exe", "cwd", "root")


def copy_file(src: str, dst: str) -> None:
    try:
        with open(src, "rb") as f:
            data = f.read()
    except OSError as e:
        print(f"skip {src}: {e.strerror}", file=sys.stderr)
        return
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with open(dst, "wb") as f:
        f.write(data)


def copy_link(src: str, dst: str) -> None:
    try:
        target = os.readlink(src)
    except OSError as e:
        print(f"skip {src}: {e.strerror}", file=sys.stderr)
        return
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    os.symlink(target, dst)


def copy_task(pid: int, full: bool) -> None:
    src, dst = f"/proc/{pid}", os.path.join(HERE, str(pid))
    for name in FILES if full else ("stat", "status", "maps", "limits", "auxv"):
        copy_file(f"{src}/{name}", f"{dst}/{name}")
    for tid in os.listdir(f"{src}/task"):
        for name in TASK_FILES:
            copy_file(f"{src}/task/{tid}/{name}", f"{dst}/task/{tid}/{name}")
    if not full:
        return
    for name in LINKS:
        copy_link(f"{src}/{name}", f"{dst}/{name}")
    for fd in os.listdir(f"{src}/fd"):
        copy_link(f"{src}/fd/{fd}", f"{dst}/fd/{fd}")
        copy_file(f"{src}/fdinfo/{fd}", f"{dst}/fdinfo/{fd}")
    for kind in os.listdir(f"{src}/ns"):
        copy_link(f"{src}/ns/{kind}", f"{dst}/ns/{kind}")


def main() -> None:
    for entry in os.listdir(HERE):
        if entry.isdigit():
            shutil.rmtree(os.path.join(HERE, entry))
    with tempfile.TemporaryDirectory(prefix="lxccr fixture ") as tmp:
        os.mkdir(os.path.join(tmp, "a b"))
        exe = os.path.join(tmp, "fixture")
        subprocess.run(["gcc", "-O1", "-pthread", "-o", exe,
                        os.path.join(HERE, "fixture.c")], check=True)
        proc = subprocess.Popen([exe, tmp], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                stderr=subprocess.PIPE,
                                cwd=tmp, start_new_session=True)
        try:
            words = proc.stdout.readline().split()
            if not words or words[0] != b"ready":
                raise SystemExit(f"fixture failed: {proc.stderr.read()!r}")
            pid, tid, zombie, child, thread_child = map(int, words[1:])
            copy_task(pid, full=True)
            for other in (zombie, child, thread_child, 2):
                copy_task(other, full=False)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with open(os.path.join(HERE, "pids.json"), "w") as f:
        json.dump({"fixture": pid, "thread": tid, "zombie": zombie, "child": child,
                   "thread_child": thread_child, "kthreadd": 2}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
