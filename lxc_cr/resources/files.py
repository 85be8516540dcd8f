"""The file descriptor table, and the fd kinds: regular files, directories, devices.

Each fd is classified from ``/proc/PID/fd/N`` (readlink + stat) and ``/proc/PID/fdinfo/N``
(``pos:``, ``flags:`` octal, ``mnt_id:``, ``ino:``); sockets further by SO_DOMAIN/SO_TYPE/
SO_PROTOCOL on a copy taken with pidfd_getfd.  ``HANDLERS`` maps each supported kind to its
handler (the one dispatch point for fds); a kind not in it is refused by name:
``pid N (comm) fd M: <kind>: not supported``.

A handler is a module (pipes, unix_sockets, eventfds, ...) or object with any of:
    check(ctx, task, d) -> list[Unsupported]      before freezing (``ctx.descs`` = all fds)
    dump(ctx, task, d, file_id)                   its own records (once per object)
    prepare(ctx)                                  restorer, before the init is forked
    restore(ctx, task, rec, remote) -> fd         in the task, for descriptions not prepared
    LATE = True                                   restored after every other fd (epoll)

Open file descriptions shared between fds (dup, fork inheritance) are found with
kcmp(KCMP_FILE) and keep one ``file_id``.  On restore the first fd of a description opens
it; the other fds of the same process dup it, and other processes take it with
pidfd_getfd, so offset and flags stay shared.

Inherited descriptions: a ``prepare(ctx)`` may create the open file description of a
``file_id`` in the restorer itself (pipes, socketpairs, ghost files, memfds) and register it
with ``inherit(ctx, file_id, fd)``: it is moved to a high fd number above every recorded
fd, so every restored process (all forked from the restorer) holds it.  The first fd of
that description in the tree is a dup of it; once a process's table is built its inherited
copies are closed, the reaper init's too (``release_inherited``), and the restorer's own
(``close_inherited``).

A table shared by processes (CLONE_FILES without CLONE_THREAD) is refused: detected with
kcmp(KCMP_FILES).
"""

from __future__ import annotations

import os
import socket
import stat as st_mod
from dataclasses import dataclass

from lxc_cr.errors import KernelError, RestoreFailed, Unsupported
from lxc_cr.kernel.sys import syscall
from lxc_cr.resources.files_records import FD

O_ACCMODE, O_CREAT, O_TRUNC, O_EXCL, O_APPEND = 3, 0o100, 0o1000, 0o200, 0o2000
O_NONBLOCK = 0o4000
O_CLOEXEC, O_DIRECTORY, O_NOCTTY = 0o2000000, 0o200000, 0o400
AT_FDCWD = -100
KCMP_FILE, KCMP_FILES = 0, 2
F_DUPFD, F_GETFD, F_SETFD, F_DUPFD_CLOEXEC, FD_CLOEXEC = 0, 1, 2, 1030, 1
SOL_SOCKET, SO_TYPE, SO_PROTOCOL, SO_DOMAIN = 1, 3, 38, 39
DEVICES = {(1, 3): "/dev/null", (1, 5): "/dev/zero", (1, 8): "/dev/random",
           (1, 9): "/dev/urandom"}
ANON_KINDS = {
    "[eventfd]": "eventfd", "[eventpoll]": "epoll", "[signalfd]": "signalfd",
    "[timerfd]": "timerfd", "inotify": "inotify", "[fanotify]": "fanotify",
    "[io_uring]": "io_uring instance", "[perf_event]": "perf_event",
    "[userfaultfd]": "userfaultfd", "bpf-map": "bpf map", "bpf-prog": "bpf program",
    "[pidfd]": "pidfd", "[timerfd_create]": "timerfd",
}
SOCK_FAMILIES = {1: "unix", 2: "inet", 10: "inet6", 16: "netlink", 17: "packet"}
SOCK_TYPES = {1: "stream", 2: "dgram", 3: "raw", 5: "seqpacket"}


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
    info: object = None          # the parsed FdInfo (kind-specific lines in .extra)
    sock: tuple = ()             # (family, type, protocol) of a socket


def read_contents(host_pid: int, fd: int, extra=None) -> tuple[list[bytes], object]:
    """The whole contents of a task's file through /proc/PID/fd/N (a fresh open of the same
    inode, so the task's offset is untouched), in chunks for ImageWriter.write_block, with
    its fstat; ``extra(fd)`` is called on the open file, e.g. to read memfd seals."""
    src = f"/proc/{host_pid}/fd/{fd}"
    try:
        mine = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise KernelError(f"open({src})", e.errno, pid=host_pid) from None
    try:
        st = os.fstat(mine)
        chunks, off = [], 0
        while off < st.st_size:
            b = os.pread(mine, min(1 << 24, st.st_size - off), off)
            if not b:
                break
            chunks.append(b)
            off += len(b)
        return chunks, (st, extra(mine) if extra else None)
    finally:
        os.close(mine)


def getfd(host_pid: int, fd: int) -> int:
    """A copy of fd ``fd`` of ``host_pid`` in this process (same open file description)."""
    pidfd = os.pidfd_open(host_pid)
    try:
        return syscall("pidfd_getfd", pidfd, fd, 0, pid=host_pid)
    finally:
        os.close(pidfd)


def _sock_kind(host_pid: int, fd: int) -> tuple[str, tuple]:
    try:
        mine = getfd(host_pid, fd)
    except KernelError:
        return "socket", ()
    try:
        s = socket.socket(fileno=os.dup(mine))
        try:
            fam = s.getsockopt(SOL_SOCKET, SO_DOMAIN)
            typ = s.getsockopt(SOL_SOCKET, SO_TYPE)
            proto = s.getsockopt(SOL_SOCKET, SO_PROTOCOL)
        finally:
            s.close()
    except OSError:
        return "socket", ()
    finally:
        os.close(mine)
    name = SOCK_FAMILIES.get(fam, f"family {fam}")
    if fam == 1:
        return "unix socket", (fam, typ, proto)
    if fam in (2, 10) and typ == 1 and proto in (0, 6):
        return "tcp socket", (fam, typ, proto)
    if fam in (2, 10) and typ == 2 and proto in (0, 17):
        return "udp socket", (fam, typ, proto)
    return f"{name} {SOCK_TYPES.get(typ, f'type {typ}')} socket", (fam, typ, proto)


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
    sock = ()
    if link.startswith("pipe:"):
        kind = "pipe"
    elif link.startswith("socket:"):
        kind, sock = _sock_kind(host_pid, fd)
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
    return FdDesc(fd, kind, link, info.flags, info.pos, ino, dev, rdev, mode, info, sock)


def _is_external_pipe(ctx, task, d: FdDesc) -> bool:
    """A pipe on stdin/stdout/stderr whose inode no other fd of the tree holds: it leads out
    of the tree (e.g. to whoever started it) and is reconnected to the restorer's own fd."""
    return d.fd <= 2 and ctx.pipe_inode_count.get(d.ino, 0) == 1


def _shared_table(ctx, task) -> Unsupported | None:
    """An fd table shared with another process of the tree (clone(CLONE_FILES))."""
    seen = getattr(ctx, "_tables", None)
    if seen is None:
        seen = ctx._tables = []
    for other_pid, other_comm in seen:
        try:
            same = syscall("kcmp", task.host_pid, other_pid, KCMP_FILES, 0, 0) == 0
        except KernelError:
            continue
        if same:
            return Unsupported(task.host_pid, task.stat.comm,
                               f"fd table shared with pid {other_pid} ({other_comm}) "
                               f"through CLONE_FILES")
    seen.append((task.host_pid, task.stat.comm))
    return None


def check(ctx, task, descs: list[FdDesc]) -> list[Unsupported]:
    _register()
    out = []
    shared = _shared_table(ctx, task)
    if shared:
        out.append(shared)
    for d in descs:
        kind = d.kind
        if kind in ("pipe", "fifo") and _is_external_pipe(ctx, task, d):
            continue
        h = HANDLERS.get(kind)
        if kind not in HANDLERS:
            out.append(Unsupported(task.host_pid, task.stat.comm, kind, fd=d.fd))
        elif hasattr(h, "check"):
            out += h.check(ctx, task, d)
    return out


def dump(ctx, task, descs: list[FdDesc]) -> None:
    _register()
    for d in descs:
        kind = d.kind
        if kind in ("pipe", "fifo") and _is_external_pipe(ctx, task, d):
            kind = "external-pipe"
        cloexec = bool(d.flags & O_CLOEXEC)
        file_id = ctx.file_id(task.host_pid, d)
        ctx.writer.add(FD, dict(pid=task.pid, fd=d.fd, kind=kind, flags=d.flags & ~O_CLOEXEC,
                                cloexec=cloexec, pos=d.pos, target=d.target, file_id=file_id))
        h = HANDLERS.get(kind)
        if h is not None and hasattr(h, "dump"):
            h.dump(ctx, task, d, file_id)


def kcmp_same_file(pid1: int, fd1: int, pid2: int, fd2: int) -> bool:
    return syscall("kcmp", pid1, pid2, KCMP_FILE, fd1, fd2) == 0


def once(ctx, name: str, key) -> bool:
    """True the first time (name, key) is seen during this dump or restore."""
    done = ctx.__dict__.setdefault("_once", set())
    if (name, key) in done:
        return False
    done.add((name, key))
    return True


# --- restore: inherited descriptions ------------------------------------------------------

def prepare(ctx, init_pid: int) -> None:
    """Run every handler's ``prepare(ctx)`` in the restorer once the init is stopped and has
    its scratch page (so before any task is forked from it), then pass the descriptions they
    registered with ``inherit()`` into the init (SCM_RIGHTS), where every task inherits them.
    ``ctx.inherited_files`` maps file_id -> fd number in every task."""
    _register()
    ctx.inherited_files = {}
    ctx.pending_files = {}
    done = set()
    try:
        for h in HANDLERS.values():
            if h is not None and hasattr(h, "prepare") and id(h) not in done:
                done.add(id(h))
                h.prepare(ctx)
        ids = list(ctx.pending_files)
        got = send_to_init(ctx, init_pid, [ctx.pending_files[i] for i in ids])
        ctx.inherited_files = dict(zip(ids, got))
    finally:
        for fd in ctx.pending_files.values():
            os.close(fd)
        ctx.pending_files = {}


def inherit(ctx, file_id: int, fd: int) -> None:
    """Make the restorer's ``fd`` the open file description of ``file_id`` in the tree
    (takes ownership of ``fd``)."""
    ctx.pending_files[file_id] = fd


SCM_RIGHTS, MSG_CMSG_CLOEXEC = 1, 0x40000000
_BATCH = 64


def send_to_init(ctx, init_pid: int, fds: list[int]) -> list[int]:
    """Pass fds of the restorer into the stopped init over a socketpair made in the init
    (sendmsg SCM_RIGHTS here, recvmsg injected there); returns their numbers in the init,
    moved to the inherited range (ctx.inherit_fd)."""
    import struct
    if not fds:
        return []
    rm = ctx.init_remote
    buf = ctx.scratch + 2048
    rm.call("socketpair", socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, 0, buf)
    a, b = struct.unpack("<ii", rm.read(buf, 8))
    out: list[int] = []
    try:
        mine = getfd(init_pid, b)
        rm.call("close", b)
        with socket.socket(fileno=mine) as s:
            for i in range(0, len(fds), _BATCH):
                chunk = fds[i:i + _BATCH]
                socket.send_fds(s, [b"f"], chunk)
                msg, iov, data, ctl = buf, buf + 64, buf + 80, buf + 128
                ctl_len = 16 + 4 * _BATCH
                rm.write(iov, struct.pack("<QQ", data, 1))
                rm.write(msg, struct.pack("<QQQQQQQ", 0, 0, iov, 1, ctl, ctl_len, 0))
                rm.call("recvmsg", a, msg, MSG_CMSG_CLOEXEC)
                clen, level, typ = struct.unpack("<Qii", rm.read(ctl, 16))
                n = (clen - 16) // 4
                if level != socket.SOL_SOCKET or typ != SCM_RIGHTS or n != len(chunk):
                    raise RestoreFailed(f"passing {len(chunk)} fds to the init: got {n}")
                for fd in struct.unpack(f"<{n}i", rm.read(ctl + 16, 4 * n)):
                    out.append(ctx.inherit_fd(fd))
    finally:
        rm.call("close", a)
    return out


def close_inherited(ctx) -> None:
    """Nothing of ours stays open in the restorer (kept for the restore orchestrator)."""
    for fd in getattr(ctx, "pending_files", {}).values():
        try:
            os.close(fd)
        except OSError:
            pass
    ctx.pending_files = {}


def release_inherited(ctx, remote) -> None:
    """Close every inherited fd in a process that does not belong to the tree (the reaper
    init), so it does not hold pipe ends or sockets open."""
    for fd in list(getattr(ctx, "inherited", [])):
        try:
            remote.call("close", fd)
        except KernelError:
            pass


# --- restore: the fd table ----------------------------------------------------------------

def open_path(ctx, remote, path: str, flags: int, mode: int = 0) -> int:
    buf = ctx.scratch + 2048
    remote.write(buf, path.encode() + b"\0")
    return remote.call("openat", AT_FDCWD, buf, flags, mode)


_open_path = open_path


class _Reg:
    """Regular files, directories and the plain devices: reopened by path in the task."""

    @staticmethod
    def restore(ctx, task, rec, remote) -> int:
        flags = rec.flags & ~(O_CREAT | O_TRUNC | O_EXCL) | O_NOCTTY
        fd = open_path(ctx, remote, rec.target, flags)
        if rec.kind == "reg" and rec.pos:
            remote.call("lseek", fd, rec.pos, 0)
        return fd


def restore_reg(ctx, task, rec, remote) -> int:
    return _Reg.restore(ctx, task, rec, remote)


def restore(ctx, task, remote, keep: set[int]) -> None:
    """Rebuild the fd table of ``task``: close what the restorer left, then create each
    recorded fd at its number (``keep`` are inherited fds still needed, e.g. external)."""
    _register()
    recs = sorted(ctx.by_pid("fd", task.pid),
                  key=lambda r: (bool(getattr(HANDLERS.get(r.kind), "LATE", False)), r.fd))
    external = {r.fd for r in recs if r.kind == "external-pipe"}
    inherited = getattr(ctx, "inherited_files", {})
    keep = set(keep) | external | set(inherited.values())
    lo = 0
    for k in sorted(keep) + [0x7FFFFFFF]:
        if k > lo:
            remote.call("close_range", lo, k - 1, 0)
        lo = k + 1
    for r in recs:
        if r.kind == "external-pipe":
            continue
        first = ctx.fd_owner.get(r.file_id)
        if first is None and r.file_id in inherited:
            tmp = remote.call("fcntl", inherited[r.file_id], F_DUPFD_CLOEXEC, 0)
            ctx.fd_owner[r.file_id] = (task.pid, r.fd)
        elif first is None:
            handler = HANDLERS.get(r.kind)
            if handler is None or not hasattr(handler, "restore"):
                raise RestoreFailed(f"pid {task.pid} fd {r.fd}: {r.kind}: cannot restore")
            tmp = handler.restore(ctx, task, r, remote)
            ctx.fd_owner[r.file_id] = (task.pid, r.fd)
        elif first[0] == task.pid:
            tmp = remote.call("fcntl", first[1], F_DUPFD_CLOEXEC, 0)
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
            remote.call("fcntl", r.fd, F_SETFD, 0)
        else:
            remote.call("fcntl", r.fd, F_SETFD, FD_CLOEXEC)
    for fd in inherited.values():
        if fd not in external:
            remote.call("close", fd)


HANDLERS: dict = {"reg": _Reg, "dir": _Reg, "dev": _Reg, "external-pipe": None}


_registered = False


def _register() -> None:
    """Load the per-kind modules into HANDLERS (lazily: they import this module)."""
    global _registered
    if _registered:
        return
    _registered = True
    import importlib
    for name in ("pipes", "ghost_files", "memfd", "eventfds", "epoll", "unix_sockets",
                 "inet_sockets", "inotify"):
        try:
            mod = importlib.import_module(f"lxc_cr.resources.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"lxc_cr.resources.{name}":
                raise
            continue
        for kind in mod.KINDS:
            HANDLERS[kind] = mod
