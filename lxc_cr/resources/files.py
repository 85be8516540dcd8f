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

Fd tables shared by processes (clone(CLONE_FILES) without CLONE_THREAD), found with
kcmp(KCMP_FILES): a process whose table is its parent's gets an ``fd_table`` record instead
of fd records (the table's fds are recorded once, under the topmost process sharing it), is
forked again with clone3 CLONE_FILES (``clone_flags``), and the table is rebuilt once, by
the last of its processes to be rebuilt (``restore``: the others' memory still maps the
inherited shmem fds).  Any other sharing (siblings whose parent unshared its table, a
process and a grandchild) cannot be recreated by forking and is refused.
"""

from __future__ import annotations

import os
import socket
import stat as st_mod
from dataclasses import dataclass

from lxc_cr.errors import KernelError, RestoreFailed, Unsupported
from lxc_cr.kernel.sys import syscall
from lxc_cr.resources.files_records import FD, FD_TABLE

O_ACCMODE, O_CREAT, O_TRUNC, O_EXCL, O_APPEND = 3, 0o100, 0o1000, 0o200, 0o2000
CLONE_FILES = 0x400
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
    """One open fd of a task: what /proc/PID/fd and fstat tell about it."""

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


def same_table(host_pid1: int, host_pid2: int) -> bool:
    """Whether two processes share one fd table (kcmp KCMP_FILES; False for a zombie)."""
    try:
        return syscall("kcmp", host_pid1, host_pid2, KCMP_FILES, 0, 0) == 0
    except KernelError:
        return False


def shares_parent_table(task) -> bool:
    """``task`` (a dump TaskState) shares its fd table with its parent in the tree."""
    return bool(task.ppid) and same_table(task.host_pid, task.stat.ppid)


def _tables(ctx) -> dict:
    """Once per check, over every process of the tree: {host pid: Unsupported} for fd
    tables shared in a way a fork cannot recreate.  A process sharing its parent's table is
    left with no fds of its own in ``ctx.descs`` (the parent's check and dump cover them),
    and its pipe ends are not counted twice in ``ctx.pipe_inode_count``."""
    got = ctx.__dict__.get("_fd_tables")
    if got is not None:
        return got
    got = ctx._fd_tables = {}
    owners: list = []
    for t in ctx.tasks:
        if t.zombie or t.host_pid not in ctx.descs:
            continue
        if shares_parent_table(t):
            if any(d.kind == "tty" for d in ctx.descs[t.host_pid]):
                got[t.host_pid] = Unsupported(t.host_pid, t.stat.comm, "terminal in an fd "
                                              "table shared with its parent (CLONE_FILES)")
            for d in ctx.descs[t.host_pid]:
                if d.kind in ("pipe", "fifo") and d.ino in ctx.pipe_inode_count:
                    ctx.pipe_inode_count[d.ino] -= 1
            ctx.descs[t.host_pid] = []
            continue
        other = next((o for o in owners if same_table(t.host_pid, o.host_pid)), None)
        if other is None:
            owners.append(t)
        else:
            got[t.host_pid] = Unsupported(
                t.host_pid, t.stat.comm, f"fd table shared with pid {other.host_pid} "
                f"({other.stat.comm}) through CLONE_FILES, which is not its parent")
    return got


def check(ctx, task, descs: list[FdDesc]) -> list[Unsupported]:
    _register()
    out = []
    shared = _tables(ctx).get(task.host_pid)
    if shared:
        out.append(shared)
    descs = ctx.descs.get(task.host_pid, descs)     # [] for a table its parent holds
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
    if shares_parent_table(task):
        ctx.writer.add(FD_TABLE, dict(pid=task.pid, shared_with=task.ppid))
        return
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
    """Pass fds of the restorer into the stopped init; returns their numbers in the init,
    moved to the inherited range (ctx.inherit_fd)."""
    return [ctx.inherit_fd(fd) for fd in send_fds(ctx, ctx.init_remote, init_pid, fds)]


def send_fds(ctx, rm, host_pid: int, fds: list[int]) -> list[int]:
    """Pass fds of the restorer into a stopped task over a socketpair made in it (sendmsg
    SCM_RIGHTS here, recvmsg injected there); returns their numbers in the task."""
    import struct
    if not fds:
        return []
    buf = ctx.scratch + 2048
    rm.call("socketpair", socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, 0, buf)
    a, b = struct.unpack("<ii", rm.read(buf, 8))
    out: list[int] = []
    try:
        mine = getfd(host_pid, b)
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
                    raise RestoreFailed(f"passing {len(chunk)} fds to pid {host_pid}: got {n}")
                out += struct.unpack(f"<{n}i", rm.read(ctl + 16, 4 * n))
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


def _table_of(ctx, pid: int) -> tuple[int, bool]:
    """(pid whose fd records describe the table of ``pid``, whether ``pid`` rebuilds it:
    the last of the table's processes in restore order)."""
    got = ctx.__dict__.get("_table_owner")
    if got is None:
        parent = {r.pid: r.shared_with for r in ctx.records["fd_table"]}
        owner, last = {}, {}
        for rec in ctx.records["task"]:
            o = rec.pid
            while o in parent:
                o = parent[o]
            owner[rec.pid] = o
            if rec.state != "Z":
                last[o] = rec.pid
        got = ctx._table_owner = (owner, last)
    owner, last = got
    o = owner.get(pid, pid)
    return o, last.get(o, pid) == pid


def clone_flags(ctx, parent_rec, rec) -> int:
    """CLONE_FILES if ``rec`` shares the fd table of its parent (an ``fd_table`` record);
    ``parent_rec`` is the process it is forked from (None: the restorer's reaper init)."""
    for r in ctx.by_pid("fd_table", rec.pid):
        if parent_rec is None or parent_rec.pid != r.shared_with:
            raise RestoreFailed(f"pid {rec.pid}: its fd table is shared with pid "
                                f"{r.shared_with}, but it is forked from another process")
        return CLONE_FILES
    return 0


def restore(ctx, task, remote, keep: set[int]) -> None:
    """Rebuild the fd table of ``task``: close what the restorer left, then create each
    recorded fd at its number (``keep`` are inherited fds still needed, e.g. external).
    A table shared by several processes (CLONE_FILES) is rebuilt once, by the last of them."""
    _register()
    owner, rebuilds = _table_of(ctx, task.pid)
    if not rebuilds:
        return
    recs = sorted(ctx.by_pid("fd", owner),
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
        elif len(task.rec.nspids) > 1:      # in a nested pid ns: the owner is not visible
            mine = getfd(ctx.host_pids[first[0]], first[1])
            try:
                tmp = send_fds(ctx, remote, task.host_pid, [mine])[0]
            finally:
                os.close(mine)
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
                 "inet_sockets", "inotify", "packet_sockets"):
        try:
            mod = importlib.import_module(f"lxc_cr.resources.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"lxc_cr.resources.{name}":
                raise
            continue
        for kind in mod.KINDS:
            HANDLERS[kind] = mod
