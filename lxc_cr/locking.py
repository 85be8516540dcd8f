"""One lxc-cr operation per container at a time: an exclusive flock on
/run/lxc-cr/lock/KIND-NAME, held for the whole checkpoint or restore.  A second operation
on the same container refuses at once (exit 1) naming the holder's pid; the kernel drops
the lock when the holder dies, so a killed lxc-cr leaves no stale lock behind."""

from __future__ import annotations

import contextlib
import fcntl
import os

from lxc_cr.errors import Busy

LOCK_DIR = "/run/lxc-cr/lock"


@contextlib.contextmanager
def container_lock(kind: str, name: str, op: str):
    os.makedirs(LOCK_DIR, mode=0o700, exist_ok=True)
    path = os.path.join(LOCK_DIR, f"{kind}-{name.replace('/', '_')}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise Busy(f"{name}: another lxc-cr operation is in progress on this container "
                       f"({holder})", path=path) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {op}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
