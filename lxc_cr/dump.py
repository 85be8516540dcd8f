"""Dump orchestrator: check, freeze, record every resource, write the image, then kill or
resume the tree.

Order (rule 4 and 5 of the design):
  1. discover the tree and run every module's check() without stopping anything;
  2. freeze: PTRACE_SEIZE + PTRACE_INTERRUPT every thread, rescanning until stable;
  3. dump each resource module into the image (written under a temporary name);
  4. commit (fsync, rename), verify the image, and only then kill the tree;
every failure path restores registers and signal masks, unmaps our scratch pages and
detaches, so the tree resumes untouched and no file named IMAGE exists.
"""

from __future__ import annotations

import os
import signal
import struct
import time
from dataclasses import dataclass, field

from lxc_cr import faults, hostcompat, intent
from lxc_cr import progress as progress_bar
from lxc_cr.errors import KernelError, OperationFailed, Refused, TaskGone, UnknownTarget
from lxc_cr.kernel.procfs import Proc
from lxc_cr.kernel.ptrace import (O_TRACESYSGOOD, STOP_PATIENCE, TRAMPOLINE_SIZE,
                                  TRAMPOLINE_USED, Colocation, GuardedRemote, Remote, Tracee,
                                  affinities, find_syscall_insn, pread_mem, reap, trampoline)
from lxc_cr.kernel.sys import syscall
from lxc_cr.stats import DUMP_STATS, us

PAGE = 4096
PROT_RWX, MAP_PRIVATE_ANON = 7, 0x22


@dataclass
class ThreadState:
    """One thread of a task being dumped: its ids, creds, tracee and saved state."""

    host_tid: int
    tid: int = 0
    nstids: list = field(default_factory=list)
    comm: str = ""
    creds: object = None
    tracee: Tracee | None = None
    regs: object = None
    sigmask: int = 0
    remote: Remote | None = None


@dataclass
class TaskState:
    """One process being dumped: what /proc told, its threads, maps, fds and scratch page."""

    host_pid: int
    stat: object = None
    state0: str = ""            # state before we stopped it
    creds: object = None
    pid: int = 0
    ppid: int = 0
    pgid: int = 0
    sid: int = 0
    nspids: list = field(default_factory=list)
    children: list = field(default_factory=list)
    threads: list = field(default_factory=list)
    maps: list = field(default_factory=list)
    fds: list = field(default_factory=list)
    mem_fd: int = -1
    scratch: int = 0
    scratch_len: int = 0
    vdso_pad: int = 0
    syscall_ip: int = 0

    @property
    def zombie(self) -> bool:
        return self.stat.state in ("Z", "X")

    @property
    def leader(self) -> ThreadState:
        return self.threads[0]


class DumpCtx:
    def __init__(self, proc: Proc):
        self.proc = proc
        self.writer = None
        self.stats = {"pages_scanned": 0, "pages_written": 0}
        self.shmem_ids: dict[int, int] = {}
        self.pipe_inode_count: dict[int, int] = {}
        self._files: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
        self._next_file_id = 1
        self._vmflags: dict[int, dict] = {}

    def scratch_for(self, task) -> int:
        return task.scratch

    def proc_vmflags(self, host_pid: int) -> dict:
        from lxc_cr.kernel.procfs import parse_smaps_vmflags
        if host_pid not in self._vmflags:
            self._vmflags[host_pid] = parse_smaps_vmflags(self.proc.read(host_pid, "smaps"))
        return self._vmflags[host_pid]

    def file_id(self, host_pid: int, d) -> int:
        """Same id for fds that share one open file description (kcmp KCMP_FILE)."""
        from lxc_cr.resources.files import kcmp_same_file
        key = (d.dev, d.ino)
        for other_pid, other_fd, fid in self._files.get(key, []):
            if kcmp_same_file(host_pid, d.fd, other_pid, other_fd):
                return fid
        fid = self._next_file_id
        self._next_file_id += 1
        self._files.setdefault(key, []).append((host_pid, d.fd, fid))
        return fid


# --- discovery and checks -----------------------------------------------------------------

def discover(proc: Proc, root_pid: int) -> list[TaskState]:
    """The tree rooted at root_pid, parents before children."""
    try:
        root_stat = proc.stat(root_pid)
    except TaskGone:
        raise UnknownTarget(f"no process with pid {root_pid}") from None
    if root_pid == os.getpid() or root_pid == 1:
        raise UnknownTarget(f"pid {root_pid}: refusing to checkpoint "
                            f"{'lxc-cr itself' if root_pid == os.getpid() else 'the host init'}")
    del root_stat
    tasks: list[TaskState] = []
    seen = set()
    stack = [root_pid]
    while stack:
        hp = stack.pop(0)
        if hp in seen:
            continue
        seen.add(hp)
        t = TaskState(hp)
        try:
            refresh(proc, t)
            t.children = [] if t.zombie else proc.children(hp)
        except TaskGone:
            if hp == root_pid:
                raise
            continue                      # exited meanwhile: not part of the tree any more
        tasks.append(t)
        stack.extend(t.children)
    _relative_pids(tasks)
    return tasks


def refresh(proc: Proc, t: TaskState) -> None:
    t.stat = proc.stat(t.host_pid)
    if not t.state0:
        t.state0 = t.stat.state
    t.creds = proc.creds(t.host_pid)
    tids = [t.host_pid] if t.zombie else proc.tids(t.host_pid)
    known = {th.host_tid: th for th in t.threads}
    t.threads = [known.get(tid) or ThreadState(tid) for tid in tids]


def _relative_pids(tasks: list[TaskState]) -> None:
    root = tasks[0]
    level = len(root.creds.nspid) - 1
    by_host = {t.host_pid: t for t in tasks}
    for t in tasks:
        t.nspids = list(t.creds.nspid[level:])
        t.pid = t.nspids[0]
        parent = by_host.get(t.stat.ppid)
        t.ppid = parent.creds.nspid[level] if parent else 0
        t.pgid = t.creds.nspgid[level] if len(t.creds.nspgid) > level else 0
        t.sid = t.creds.nssid[level] if len(t.creds.nssid) > level else 0


def check_tree(proc: Proc, tasks: list[TaskState], managed: bool = False,
               tcp_established: bool = False, net=None) -> list:
    """Every resource that cannot be checkpointed, without stopping anything
    (``tcp_established``: established TCP connections are dumped, not refused; ``net``:
    namespaces.net_reads()'s, whose helper reads the devices meanwhile)."""
    from lxc_cr.resources import files, namespaces, seccomp
    problems = list(seccomp.check(proc, tasks, managed))
    for t in tasks:
        if t.host_pid == os.getpid():
            problems.append(_unsupported(t, "lxc-cr itself inside the tree"))
    pipe_count: dict[int, int] = {}
    descs = {}
    gone = set()
    for t in tasks:
        if t.zombie:
            continue
        try:
            problems += _check_task(proc, t, descs)
        except TaskGone:
            gone.add(t.host_pid)                  # exited meanwhile (only without a freezer)
            continue
        for d in descs[t.host_pid]:
            if d.kind in ("pipe", "fifo"):
                pipe_count[d.ino] = pipe_count.get(d.ino, 0) + 1
    ctx = type("C", (), {"pipe_inode_count": pipe_count, "descs": descs, "tasks": tasks,
                         "tcp_established": tcp_established})()
    for t in tasks:
        if not t.zombie and t.host_pid not in gone:
            t.fds = descs[t.host_pid]
            try:
                problems += files.check(ctx, t, t.fds)
            except TaskGone:
                if t is tasks[0]:
                    raise
                # exited meanwhile (a container's short-lived sleep): the freeze rescans
    problems += namespaces.check(proc, tasks[0], managed, tasks=tasks, net=net)   # last: net
    return problems, pipe_count


def _check_task(proc: Proc, t: TaskState, descs: dict) -> list:
    from lxc_cr.resources import files, memory, ttys
    t.maps = proc.maps(t.host_pid)
    problems = memory.check(proc, t.host_pid, t.stat.comm, t.maps)
    if proc.read(t.host_pid, "timers").strip():
        problems.append(_unsupported(t, "POSIX timer"))
    descs[t.host_pid] = []
    for fd in proc.fds(t.host_pid):
        try:
            d = files.describe(proc, t.host_pid, fd)
        except OperationFailed as e:
            if getattr(e, "errno", None) == 2:        # ENOENT: closed meanwhile
                continue
            raise
        ttys.classify(d)
        descs[t.host_pid].append(d)
    return problems


def _unsupported(t, kind):
    from lxc_cr.errors import Unsupported
    return Unsupported(t.host_pid, t.stat.comm, kind)


# --- freeze / thaw ------------------------------------------------------------------------

def freeze(proc: Proc, tasks: list[TaskState], freezer=None) -> list[TaskState]:
    """Seize and interrupt every thread, rescanning until no new task or thread appears.

    With a cgroup ``freezer`` the whole group is frozen first, so the tree cannot change
    while it is walked; every thread is seized and interrupted while frozen, then the group
    is thawed and the interrupts are collected (the freezer is thawed on every path).  A
    parent found in vfork() is waited for first (``_sharing_memory``)."""
    root = tasks[0].host_pid
    if freezer is not None:
        pending = []
        deadline = time.monotonic() + VFORK_PATIENCE
        while True:
            with freezer:
                faults.step("dump", "cgroup frozen")
                tasks = discover_frozen(proc, root, tasks)
                vforked = _sharing_memory(tasks)
                if not vforked:
                    _seize_frozen(proc, tasks, root, pending)
                    break
            _await_exec(vforked, deadline)        # thawed meanwhile: then freeze again
        stop_by = time.monotonic() + STOP_PATIENCE
        for tr in pending:
            try:
                tr.wait_event_stop(stop_by)
            except TaskGone:
                if tr.pid == root:
                    raise
    else:
        # without a freezer a parent's interrupt waits until its vfork() child has exec'd;
        # one found now that does not exec in time is refused before anything is stopped
        _await_exec(_sharing_memory(tasks), time.monotonic() + VFORK_PATIENCE)
    while True:
        new = 0
        for t in tasks:
            if t.zombie:
                continue
            try:
                refresh(proc, t)
                if t.zombie:                  # exited since it was found: recorded as such
                    new += 1
                    continue
                for th in t.threads:
                    if th.tracee is None:
                        th.tracee = Tracee.seize(th.host_tid, O_TRACESYSGOOD, pid=t.host_pid)
                        th.tracee.interrupt(wait=False)
                        th.tracee.wait_event_stop(time.monotonic() + STOP_PATIENCE)
                        new += 1
            except TaskGone:
                if t.host_pid == root:
                    raise
                new += 1              # it exited (or became a zombie) meanwhile: rescan
        fresh = discover_frozen(proc, root, tasks)
        if not new and len(fresh) == len(tasks):
            return tasks
        tasks = fresh


def _seize_frozen(proc: Proc, tasks: list[TaskState], root: int, pending: list) -> None:
    """Seize and interrupt every thread of the frozen group; the stops come once thawed."""
    for t in tasks:
        if t.zombie:
            continue
        try:
            refresh(proc, t)
            for th in t.threads:
                th.tracee = Tracee.seize(th.host_tid, O_TRACESYSGOOD, pid=t.host_pid)
                th.tracee.interrupt(wait=False)
                pending.append(th.tracee)
        except TaskGone:
            # a task already in do_exit() is not held by the freezer: it may be reaped
            # meanwhile; the rescan in freeze() drops it (or finds its zombie)
            if t.host_pid == root:
                raise


# How long a child that runs in its parent's memory (vfork) may take to exec or exit.
VFORK_PATIENCE = 5.0
KCMP_VM = 1


def _shares_vm(pid1: int, pid2: int) -> bool:
    try:
        return syscall("kcmp", pid1, pid2, KCMP_VM, 0, 0) == 0
    except KernelError:
        return False                      # one of them is gone


def _sharing_memory(tasks: list[TaskState]) -> list[tuple[TaskState, TaskState]]:
    """(parent, child) pairs of the tree whose child runs in its parent's memory: a
    vfork() child (of a shell such as dash, or of posix_spawn) that has not exec'd yet.

    Such a pair cannot be stopped: the parent waits in vfork() until the child execs or
    exits, in a sleep that only SIGKILL ends, so the parent's interrupt takes effect only
    after the child has run on, and the child would be held in its own interrupt stop: the
    dump would wait forever.  So the freeze is let go until the child has exec'd or exited
    (microseconds, for a shell), and made again."""
    by_pid = {t.host_pid: t for t in tasks}
    pairs = []
    for t in tasks:
        if t.zombie:
            continue
        for c in t.children:
            child = by_pid.get(c)
            if child is not None and not child.zombie and _shares_vm(t.host_pid, c):
                pairs.append((t, child))
    return pairs


def _await_exec(pairs, deadline: float) -> None:
    """Until each vfork() child of ``pairs`` has exec'd or exited; past ``deadline`` (the
    same for every child found while freezing) the dump is refused, nothing seized,
    naming each child and its parent."""
    delay = 0.0002
    while True:
        pairs = [(p, c) for p, c in pairs if _shares_vm(p.host_pid, c.host_pid)]
        if not pairs:
            return
        if time.monotonic() > deadline:
            from lxc_cr.errors import Unsupported
            raise Refused([Unsupported(
                c.host_pid, c.stat.comm,
                f"runs in the memory of its parent pid {p.host_pid} ({p.stat.comm}), as a "
                f"vfork() child does: the dump waited {VFORK_PATIENCE:g} s for such children "
                f"to exec or exit") for p, c in pairs])
        time.sleep(delay)
        delay = min(delay * 2, 0.005)


def discover_frozen(proc: Proc, root: int, old: list[TaskState]) -> list[TaskState]:
    by_host = {t.host_pid: t for t in old}
    out = []
    stack = [root]
    while stack:
        hp = stack.pop(0)
        t = by_host.get(hp)
        try:
            if t is None:
                t = TaskState(hp)
                refresh(proc, t)
            else:
                t.stat = proc.stat(hp)
                t.state0 = t.state0 or t.stat.state
                t.creds = proc.creds(hp)
            children = [] if t.zombie else proc.children(hp)
        except TaskGone:
            if hp == root:
                raise
            continue                  # exited before it was stopped
        out.append(t)
        t.children = children
        stack.extend(children)
    _relative_pids(out)
    return out


def release(tasks: list[TaskState]) -> None:
    """Undo everything the dump did to the live tree and detach (every failure path)."""
    for t in tasks:
        for th in t.threads:
            tr = th.tracee
            if tr is None or tr.state.value in ("detached", "gone"):
                continue
            try:
                if t.scratch and th is t.leader and th.remote is not None:
                    _boot_call(t, "munmap", t.scratch, t.scratch_len)   # not from that page
                    t.scratch = 0
                if th.regs is not None:
                    tr.setregs(th.regs)
                    tr.set_sigmask(th.sigmask)
            except Exception:
                pass
            sig = 0
            if tr.intercepted:
                sig = int.from_bytes(tr.intercepted[0][:4], "little")
            try:
                tr.detach(sig)
            except Exception:
                pass
        if t.mem_fd >= 0:
            os.close(t.mem_fd)
            t.mem_fd = -1


# --- the dump -----------------------------------------------------------------------------

def dump_tree(root_pid: int, image: str, leave_running: bool = False,
              compress: str | None = None, level: int = 3, source_kind: str = "tree",
              source_name: str | None = None, extra_records=None, progress=None,
              freezer=None, tcp_established: bool = False, key: bytes | None = None,
              net=None) -> dict:
    """``net``: an ns_net.Reads of root_pid's namespace, made by the caller as early as it
    could (namespaces.net_reads) and closed by it; without one, the checks and the dump read
    the namespace in place."""
    from lxc_cr.image.reader import ImageReader
    from lxc_cr.image.writer import ImageWriter
    from lxc_cr.resources import creds, files, memory, namespaces, signals, task as task_mod
    from lxc_cr.resources import tcp_established as tcp_established_mod
    from lxc_cr.resources import ttys  # noqa: F401 - registers the tty fd kind
    from lxc_cr.resources import threads as threads_mod

    t0 = time.monotonic()
    intent.recover_target(source_kind, source_name or str(root_pid))   # a killed earlier dump
    proc = Proc()
    tasks = discover(proc, root_pid)
    managed = source_kind != "tree"
    problems, pipe_count = check_tree(proc, tasks, managed, tcp_established, net)
    if problems:
        raise Refused(problems)
    faults.step("dump", "checked")
    ctx = DumpCtx(proc)
    ctx.pipe_inode_count = pipe_count
    ctx.tcp_established = tcp_established
    killed = False
    colo = Colocation()          # injected syscalls: the tree's threads on our CPU
    # before anything is frozen: what to undo if this process dies (intent.py)
    held = intent.begin(source_kind, source_name or str(root_pid), image, freezer)
    try:
        tasks = freeze(proc, tasks, freezer)
        tids = [th.host_tid for t in tasks if not t.zombie for th in t.threads]
        held.pinned(affinities(tids))    # first: a crash from here on gives them back
        colo.pin(tids)
        t_frozen = time.monotonic()
        faults.step("dump", "frozen")
        if net is not None:
            net.frozen()        # its helper reads what the dump records, meanwhile
        problems, ctx.pipe_inode_count = check_tree(
            proc, tasks, managed, tcp_established, net)   # seen while freezing
        if problems:
            raise Refused(problems)
        ctx.descs = {t.host_pid: t.fds for t in tasks}     # every fd of the frozen tree
        for t in tasks:
            _prepare(proc, t)
        faults.step("dump", "prepared")
        progress_bar.start("dump", _resident_anon(proc, tasks))
        root = tasks[0]
        vdso_size, vdso_hash = memory.vdso_fingerprint(root.mem_fd, root.maps, root.host_pid)
        xcr0 = hostcompat.xstate_xcr0(root.leader.tracee.get_xstate())
        with ImageWriter(image, source_kind=source_kind,
                         source_name=source_name or str(root_pid), compress=compress,
                         level=level, xcr0=xcr0, vdso_size=vdso_size,
                         vdso_hash=vdso_hash, key=key) as w:
            ctx.writer = w
            for t in tasks:
                if t.zombie:
                    task_mod.dump_zombie(ctx, t)
                    continue
                remote = t.leader.remote
                task_mod.dump(ctx, t, remote)
                faults.step("dump", f"task {t.pid}")
                signals.dump(ctx, t, remote)
                for th in t.threads:
                    threads_mod.dump(ctx, t, th, th.tracee, th.remote)
                    creds.dump(ctx, t, th, th.remote)
                signals.dump_pending(ctx, t, t.leader.tracee,
                                     [(th, th.tracee) for th in t.threads])
                files.dump(ctx, t, t.fds)
                memory.dump(ctx, t, remote)
                faults.step("dump", f"memory {t.pid}")
                if progress is not None:
                    progress(tasks.index(t) + 1, len(tasks) + 1)
            # after the processes: net's helper has read the namespace meanwhile
            namespaces.dump(ctx, root, root.leader.remote, managed, tasks=tasks,
                            net=net)
            for kind, obj in extra_records or ():
                w.add(kind, obj)
            t_written = time.monotonic()
            w.add(DUMP_STATS, dict(
                freezing_time=us(t_frozen - t0), frozen_time=us(t_written - t_frozen),
                memdump_time=ctx.stats.get("memdump_time", 0),
                memwrite_time=ctx.stats.get("memwrite_time", 0),
                pages_scanned=ctx.stats["pages_scanned"],
                pages_written=ctx.stats["pages_written"], tasks=len(tasks)))
            faults.step("dump", "written")
        t_written = time.monotonic()
        with ImageReader(image, key=key) as r:
            # records + index + bounds; block crcs were computed while writing, and the
            # records were encoded here a moment ago (no re-encoding to compare; compiled
            # parsers for the kinds written by the hundred)
            r.verify(blocks=False, canonical=False, own=True)
        faults.step("dump", "verified")
        if leave_running:
            colo.unpin()        # their own affinity, while the intent still names it
        held.end()              # the image is complete: a crash from here on loses nothing
        if not leave_running:
            tcp_established_mod.silence(ctx)    # repair mode: the kill sends no FIN/RST
            for t in tasks:
                try:
                    os.kill(t.host_pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            killed = True
    except BaseException:
        if os.path.exists(image) and not killed:
            # the image was committed but a later step failed: it must not look valid
            _unlink_quiet(image)
        raise
    finally:
        progress_bar.stop()
        colo.unpin(tracees=not killed)          # their own affinity, before they run again
        if not killed:
            tcp_established_mod.resume(ctx)     # repair mode off before the tasks run again
            release(tasks)
        else:
            tcp_established_mod.forget(ctx)     # killed: the sockets closed silently
            for t in tasks:
                for th in t.threads:
                    if th.tracee is not None:
                        th.tracee.state = th.tracee.state.__class__.GONE
                if t.mem_fd >= 0:
                    os.close(t.mem_fd)
                    t.mem_fd = -1
            _reap(tasks)
        held.end()
    t_end = time.monotonic()
    return {
        "freezing_time": int((t_frozen - t0) * 1e6),
        "frozen_time": int((t_end - t_frozen) * 1e6),
        "memdump_time": ctx.stats.get("memdump_time", 0),
        "memwrite_time": ctx.stats.get("memwrite_time", 0),
        "pages_scanned": ctx.stats["pages_scanned"],
        "pages_written": ctx.stats["pages_written"],
        "tasks": len(tasks),
    }


def _resident_anon(proc: Proc, tasks) -> int:
    """Bytes of resident anonymous memory of the tree (RssAnon), for the progress bar."""
    total = 0
    for t in tasks:
        if not t.zombie:
            kb = proc.status(t.host_pid).get("RssAnon", "0 kB").split()[0]
            total += int(kb) * 1024 if kb.isdigit() else 0
    return total


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _reap(tasks) -> None:
    reap([th.host_tid for t in tasks for th in t.threads])


def _vdso_pad(mem_fd: int, vdso, pid: int) -> int:
    """An address in the padding after the end of the vdso's ELF image (its headers,
    sections and section table) with room for one trampoline, or 0.  Nothing executes or
    reads those bytes; a write there makes the task a private copy of that vdso page (as a
    debugger's breakpoint does).  The place is the same every time, so what a killed dump
    may have left there is simply overwritten."""
    data = pread_mem(mem_fd, vdso.start, vdso.end - vdso.start, pid)
    try:
        if data[:4] != b"\x7fELF" or data[4] != 2:
            return 0
        phoff, shoff = struct.unpack_from("<QQ", data, 0x20)
        phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 0x36)
        end = max(0x40, phoff + phentsize * phnum, shoff + shentsize * shnum)
        for i in range(phnum):
            _t, _f, off, _v, _p, filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
            end = max(end, off + filesz)
        for i in range(shnum):
            _n, typ, _f, _a, off, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
            if typ != 8:                                    # SHT_NOBITS takes no room
                end = max(end, off + size)
    except struct.error:
        return 0
    at = (end + 63) & ~63
    return vdso.start + at if at + TRAMPOLINE_USED <= len(data) else 0


def _boot_call(t: TaskState, name: str, *args: int) -> int:
    """A call of the leader made while its trampoline page does not exist (the mmap that
    makes it, the munmap that removes it): from a trampoline written into the vdso's
    padding, zeroed again afterwards, or (no room) from the vdso's own syscall."""
    remote = t.leader.remote
    remote.ip = t.vdso_pad or t.syscall_ip
    if t.vdso_pad:
        remote.write(t.vdso_pad, trampoline(t.leader.regs, t.leader.sigmask))
    try:
        return remote.call(name, *args)
    finally:
        if t.vdso_pad and remote.t.state.value == "stopped":
            remote.write(t.vdso_pad, bytes(TRAMPOLINE_USED))


def _prepare(proc: Proc, t: TaskState) -> None:
    """Registers, signal masks and an injection path for every thread of a frozen task."""
    if t.zombie:
        return
    t.maps = proc.maps(t.host_pid)
    t.mem_fd = os.open(f"/proc/{t.host_pid}/mem", os.O_RDWR)   # RDWR: the trampolines
    vdso = [m for m in t.maps if m.path == "[vdso]"]
    ip = find_syscall_insn(t.mem_fd, vdso[0].start, vdso[0].end, t.host_pid) if vdso else None
    if ip is None:
        raise OperationFailed(f"pid {t.host_pid}: no syscall instruction in its vdso")
    t.syscall_ip = ip
    for th in t.threads:
        tr = th.tracee
        th.regs = tr.getregs()
        th.sigmask = tr.get_sigmask()
        th.remote = GuardedRemote(tr, ip, th.regs, t.mem_fd, th.sigmask)
        st = proc.status(t.host_pid, tid=th.host_tid)
        th.creds = proc.creds(t.host_pid, tid=th.host_tid)
        th.comm = st.get("Name", "")
        level = len(t.creds.nspid) - len(t.nspids)
        th.nstids = list(th.creds.nspid[level:])
        th.tid = th.nstids[0]
    # one page for call buffers, then one trampoline per thread (kernel.ptrace.trampoline):
    # from now on a thread whose tracer dies mid-call finds its own way back.  The mmap
    # that makes that page runs from a trampoline in the vdso's zero padding.
    t.vdso_pad = _vdso_pad(t.mem_fd, vdso[0], t.host_pid)
    size = PAGE + -(-len(t.threads) * TRAMPOLINE_SIZE // PAGE) * PAGE
    t.scratch = _boot_call(t, "mmap", 0, size, PROT_RWX, MAP_PRIVATE_ANON, -1, 0)
    t.scratch_len = size
    for i, th in enumerate(t.threads):
        at = t.scratch + PAGE + i * TRAMPOLINE_SIZE
        th.remote.write(at, trampoline(th.regs, th.sigmask))
        th.remote.ip = at
