"""The file descriptor table, and the fd kinds: regular files, directories, devices.

Each fd is classified from ``/proc/PID/fd/N`` (readlink + stat) and ``/proc/PID/fdinfo/N``
(``pos:``, ``flags:`` octal, ``mnt_id:``, ``ino:``).  ``HANDLERS`` maps each supported kind
to its module (the one dispatch point for fds); a kind not in it is refused by name:
``pid N (comm) fd M: <kind>: not supported``.

Open file descriptions shared between fds (dup, fork inheritance) are found with
kcmp(KCMP_FILE) and keep one ``file_id``.  On restore the first fd of a description opens
it; the other fds of the same process dup it, and other processes take it with
pidfd_getfd, so offset and flags stay shared.
"""

from __future__ import annotations

import os
import stat as st_mod
from dataclasses import dataclass

from lxc_cr.errors import RestoreFailed, Unsupported
from lxc_cr.kernel.sys import syscall
from lxc_cr.resources.files_records import FD

O_ACCMODE, O_CREAT, O_TRUNC, O_EXCL, O_APPEND = 3, 0o100, 0o1000, 0o200, 0o2000
O_CLOEXEC, O_DIRECTORY, O_NOCTTY = 0o2000000, 0o200000, 0o400
AT_FDCWD = -100
KCMP_FILE = 0
F_GETFD, FD_CLOEXEC = 1, 1
DEVICES = {(1, 3): "/dev/null", (1, 5): "/dev/zero", (1, 8): "/dev/random",
           (1, 9): "/dev/urandom"}
ANON_KINDS = {
    "[eventfd]": "eventfd", "[eventpoll]": "epoll", "[signalfd]": "signalfd",
    "[timerfd]": "timerfd", "inotify": "inotify", "[fanotify]": "fanotify",
    "[io_uring]": "io_uring instance", "[perf_event]": "perf_event",
    "[userfaultfd]": "userfaultfd", "bpf-map": "bpf map", "bpf-prog": "bpf program",
    "[pidfd]": "pidfd", "[timerfd_create]": "timerfd",
}


@dataclass
class FdDesc:
    fd: int
    kind: str
    target: str
    flags: int
    pos: int
    ino: int
    dev: int
    rdev: int
    mode: int


def describe(proc, host_pid: int, fd: int) -> FdDesc:
    """Classify one fd of a live process."""
    link = proc.readlink(host_pid, f"fd/{fd}")
    info = proc.fdinfo(host_pid, fd)
    try:
        s = os.stat(f"/proc/{host_pid}/fd/{fd}")
        ino, dev, rdev, mode = s.st_ino, s.st_dev, s.st_rdev, s.st_mode
    except OSError:
        ino = dev = rdev = mode = 0
    kind = "unknown"
    if link.startswith("pipe:"):
        kind = "pipe"
    elif link.startswith("socket:"):
        kind = "socket"
    elif link.startswith("anon_inode:"):
        name = link[len("anon_inode:"):]
        kind = ANON_KINDS.get(name, f"anon inode {name}")
    elif link.startswith("/memfd:"):
        kind = "memfd"
    elif st_mod.S_ISREG(mode):
        kind = "deleted file" if link.endswith(" (deleted)") else "reg"
    elif st_mod.S_ISDIR(mode):
        kind = "dir"
    elif st_mod.S_ISCHR(mode):
        major, minor = os.major(rdev), os.minor(rdev)
        kind = "dev" if (major, minor) in DEVICES else f"character device {major}:{minor} ({link})"
    elif st_mod.S_ISFIFO(mode):
        kind = "fifo"
    elif st_mod.S_ISBLK(mode):
        kind = f"block device ({link})"
    return FdDesc(fd, kind, link, info.flags, info.pos, ino, dev, rdev, mode)


def _is_external_pipe(ctx, task, d: FdDesc) -> bool:
    """A pipe on stdin/stdout/stderr whose inode no other fd of the tree holds: it leads out
    of the tree (e.g. to whoever started it) and is reconnected to the restorer's own fd."""
    return d.fd <= 2 and ctx.pipe_inode_count.get(d.ino, 0) == 1


def check(ctx, task, descs: list[FdDesc]) -> list[Unsupported]:
    out = []
    for d in descs:
        kind = d.kind
        if kind in ("pipe", "fifo") and _is_external_pipe(ctx, task, d):
            continue
        if kind not in HANDLERS:
            out.append(Unsupported(task.host_pid, task.stat.comm, kind, fd=d.fd))
    return out


def dump(ctx, task, descs: list[FdDesc]) -> None:
    for d in descs:
        kind = d.kind
        if kind in ("pipe", "fifo") and _is_external_pipe(ctx, task, d):
            kind = "external-pipe"
        cloexec = bool(d.flags & O_CLOEXEC)
        file_id = ctx.file_id(task.host_pid, d)
        ctx.writer.add(FD, dict(pid=task.pid, fd=d.fd, kind=kind, flags=d.flags & ~O_CLOEXEC,
                                cloexec=cloexec, pos=d.pos, target=d.target, file_id=file_id))


def kcmp_same_file(pid1: int, fd1: int, pid2: int, fd2: int) -> bool:
    return syscall("kcmp", pid1, pid2, KCMP_FILE, fd1, fd2) == 0


# --- restore ------------------------------------------------------------------------------

def _open_path(ctx, remote, path: str, flags: int) -> int:
    buf = ctx.scratch + 2048
    remote.write(buf, path.encode() + b"\0")
    return remote.call("openat", AT_FDCWD, buf, flags, 0)


def restore_reg(ctx, task, rec, remote) -> int:
    flags = rec.flags & ~(O_CREAT | O_TRUNC | O_EXCL) | O_NOCTTY
    fd = _open_path(ctx, remote, rec.target, flags)
    if rec.kind == "reg" and rec.pos:
        remote.call("lseek", fd, rec.pos, 0)
    return fd


HANDLERS = {"reg": restore_reg, "dir": restore_reg, "dev": restore_reg,
            "external-pipe": None}


def restore(ctx, task, remote, keep: set[int]) -> None:
    """Rebuild the fd table of ``task``: close what the restorer left, then create each
    recorded fd at its number (``keep`` are inherited fds still needed, e.g. external)."""
    recs = sorted(ctx.by_pid("fd", task.pid), key=lambda r: r.fd)
    external = {r.fd for r in recs if r.kind == "external-pipe"}
    keep = set(keep) | external
    lo = 0
    for k in sorted(keep) + [0x7FFFFFFF]:
        if k > lo:
            remote.call("close_range", lo, k - 1, 0)
        lo = k + 1
    for r in recs:
        if r.kind == "external-pipe":
            continue
        first = ctx.fd_owner.get(r.file_id)
        if first is None:
            handler = HANDLERS.get(r.kind)
            if handler is None:
                raise RestoreFailed(f"pid {task.pid} fd {r.fd}: {r.kind}: cannot restore")
            tmp = handler(ctx, task, r, remote)
            ctx.fd_owner[r.file_id] = (task.pid, r.fd)
        elif first[0] == task.pid:
            tmp = remote.call("fcntl", first[1], 1030, 0)     # F_DUPFD_CLOEXEC
        else:
            pidfd = remote.call("pidfd_open", first[0], 0)
            try:
                tmp = remote.call("pidfd_getfd", pidfd, first[1], 0)
            finally:
                remote.call("close", pidfd)
        if tmp != r.fd:
            remote.call("dup3", tmp, r.fd, O_CLOEXEC if r.cloexec else 0)
            remote.call("close", tmp)
        elif not r.cloexec:
            remote.call("fcntl", r.fd, 2, 0)                   # F_SETFD 0
        else:
            remote.call("fcntl", r.fd, 2, FD_CLOEXEC)
