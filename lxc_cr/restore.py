"""Restore orchestrator: rebuild a recorded tree with injected syscalls only.

  0. read and verify the whole image before any process exists;
  1. fork the init of a fresh pid namespace from the restorer; it unshares the other
     recorded namespace kinds, sets them up, and blocks; we seize it;
  2. fork the tree: clone3 with set_tid injected into each parent (exact pids, ppids),
     setsid/setpgid in the child, zombies exit with their recorded status;
  3. rebuild each process: memory, signal dispositions, attributes, fds, then its other
     threads (clone3 CLONE_THREAD with set_tid) and every thread's own state;
  4. credentials, last, because they drop the privileges the steps above need;
  5. release: final registers and signal masks everywhere, the scratch page unmapped by
     its last syscall (PTRACE_SYSCALL exit stop), then every thread detached together.
If anything fails, every process created so far is killed (the pid namespace's init
first, which takes the whole namespace with it).
"""

from __future__ import annotations

import os
import signal
import struct
import time
from collections import defaultdict
from dataclasses import dataclass, field

from lxc_cr import faults, progress
from lxc_cr.errors import IncompatibleImage, RestoreFailed
from lxc_cr.kernel import sys as ksys
from lxc_cr.kernel.procfs import Proc
from lxc_cr.kernel.ptrace import (ALL_SIGNALS, O_EXITKILL, O_TRACECLONE, O_TRACEFORK,
                                  O_TRACESYSGOOD, O_TRACEVFORK, Colocation, Remote,
                                  Tracee, find_syscall_insn, reap)

PAGE = 4096
OPTIONS = O_TRACESYSGOOD | O_TRACEFORK | O_TRACEVFORK | O_TRACECLONE | O_EXITKILL
CLONE_VM, CLONE_FS, CLONE_FILES, CLONE_SIGHAND = 0x100, 0x200, 0x400, 0x800
CLONE_THREAD, CLONE_SYSVSEM, CLONE_NEWPID = 0x10000, 0x40000, 0x20000000
THREAD_FLAGS = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM
PROT_RWX, MAP_PRIVATE_ANON_FIXED_NOREPLACE = 7, 0x22 | 0x100000


@dataclass
class Live:
    """A process being rebuilt."""
    rec: object                   # its TASK record
    host_pid: int
    mem_fd: int = -1
    threads: dict = field(default_factory=dict)     # tid -> (Tracee, Remote)
    # its signal actions now (signals.query tuples): inherited from its parent at clone3,
    # the recorded ones once signals.restore set them; None: not known
    sigactions: list | None = None

    @property
    def pid(self) -> int:
        return self.rec.pid


class RestoreCtx:
    def __init__(self, reader, path: str, records=None):
        """``records``: (kind, obj) of every record, as ImageReader.verify returned them
        (None: decoded here)."""
        self.reader = reader
        self.path = path
        self.proc = Proc()
        self.stats = {"pages_restored": 0}
        self.scratch = 0
        self.shmem_fds: dict[int, int] = {}
        self.inherit_base = 1000
        self.ctty_done: set[int] = set()
        self.tty_fg: list = []
        self.inherited: list[int] = []    # fds the init passes down to every task
        self.init_remote = None
        self.fd_owner: dict[int, tuple[int, int]] = {}
        self.created: list[int] = []       # host pids, to kill if the restore fails
        self.colo = Colocation()           # injected syscalls: the new tree on our CPU
        self.host_pids: dict[int, int] = {}      # tree pid -> host pid of restored processes
        self.pidns_target: dict[int, int] = {}   # pid -> its nested init (its own view)
        self.records: dict[str, list] = defaultdict(list)
        self.net = None                    # ns_net.Rebuild of a manager's container
        self._by_pid: dict[tuple[str, int], list] = defaultdict(list)
        for kind, obj in reader.records() if records is None else records:
            if kind is None:
                continue
            self.records[kind.name].append(obj)
            if "pid" in obj:
                self._by_pid[(kind.name, obj.pid)].append(obj)

    def inherit_fd(self, fd: int) -> int:
        """Move an fd just created in the init to the inherited range; return its number."""
        high = self.init_remote.call("fcntl", fd, 1030, self.inherit_base)   # F_DUPFD_CLOEXEC
        self.init_remote.call("close", fd)
        self.inherited.append(high)
        return high

    def by_pid(self, kind: str, pid: int) -> list:
        return self._by_pid.get((kind, pid), [])

    def one(self, kind: str, pid: int):
        recs = self.by_pid(kind, pid)
        if len(recs) != 1:
            raise RestoreFailed(f"{self.path}: expected one {kind} record for pid {pid}, "
                                f"found {len(recs)}")
        return recs[0]


def restore_tree(image: str, pidfile: str | None = None, takeover=None,
                 key: bytes | None = None, max_privilege=None, accept=None) -> dict:
    """Restore IMAGE.  ``takeover``: None to fork our own pid-namespace init (tree
    restore), or a callable returning the host pid of a manager's init already seized and
    stopped at its exec (LXC, libvirt), whose namespaces the manager has set up.
    ``key``: of an encrypted image.  ``max_privilege``: a privilege.Limit the recorded
    credentials must not exceed.  ``accept(header, image)``: raises to refuse an image by
    its header (a manager's adapter: an image of its own kind).  All of these, the
    checksums and the host's compatibility are checked before any process is created."""
    from contextlib import nullcontext

    from lxc_cr import hostcompat, privilege
    t0 = time.monotonic()
    net = _net_rebuild(takeover)       # forked before the imports and checks it overlaps
    from lxc_cr.image.reader import ImageReader
    with net or nullcontext(), ImageReader(image, key=key) as reader:
        if accept is not None:
            accept(reader.header, image)
        # every record (checksum, decoding), the index and every block's bounds now; a
        # block's contents are checked (crc32) as it is read, and a mismatch kills what
        # was created, like any failed restore.  The decoded values are what is restored:
        # whether each record would re-encode to the same bytes matters to inspect and
        # convert (nothing lost), not here
        records = reader.verify(blocks=False, canonical=False)
        ctx = RestoreCtx(reader, image, records)
        ctx.net = net
        _validate(ctx)
        hostcompat.check(reader.header, image)
        privilege.check_recorded(ctx.records, image)    # no thread keeps our own root
        if max_privilege is not None:
            privilege.check(ctx.records, max_privilege, image)
        progress.start("restore", sum(p.npages for p in ctx.records["pages"]) * PAGE)
        from lxc_cr.resources import memory
        if takeover is None:
            # _start_init unshares our pid namespace, after which no thread can start; a
            # takeover never does, and starts the thread only for a mapping worth it
            memory.start_reader()
        try:
            init_pid, lives = _build(ctx, takeover)
            t_forked = ctx.t_forked
            faults.step("restore", "released")
        except BaseException:
            _kill_all(ctx.created)
            from lxc_cr.resources import ns_cgroup
            ns_cgroup.cleanup(ctx)           # the sub-cgroups it made, empty now
            from lxc_cr.resources import tcp_established
            tcp_established.forget(ctx)      # after the kill: connections close silently
            raise
        finally:
            progress.stop()
            ctx.colo.unpin()
    root = lives[0]
    if pidfile:
        tmp = f"{pidfile}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{root.host_pid}\n")
        os.rename(tmp, pidfile)
    t_end = time.monotonic()
    return {"root_host_pid": root.host_pid, "init_host_pid": init_pid,
            "forking_time": int((t_forked - t0) * 1e6),
            "restore_time": int((t_end - t0) * 1e6),
            "pages_restored": ctx.stats["pages_restored"], "tasks": len(lives)}


def _validate(ctx: RestoreCtx) -> None:
    tasks = ctx.records["task"]
    if not tasks:
        raise RestoreFailed(f"{ctx.path}: the image records no process")
    pids = set()
    for t in tasks:
        if t.pid in pids:
            raise RestoreFailed(f"{ctx.path}: pid {t.pid} recorded twice")
        if t.ppid and t.ppid not in pids and t is not tasks[0]:
            raise RestoreFailed(f"{ctx.path}: pid {t.pid} recorded before its parent {t.ppid}")
        pids.add(t.pid)
    from lxc_cr.resources import memory
    memory.check_pages(ctx)
    hdr = ctx.reader.header
    if getattr(hdr, "arch", "x86_64") not in ("x86_64", ""):
        raise IncompatibleImage(ctx.path, f"image is for {hdr.arch}, this host is x86_64")


# --- building -----------------------------------------------------------------------------

def _net_rebuild(takeover):
    """For a manager's container (``takeover``), an ns_net.Rebuild: its helper imports the
    message classes while this process imports and checks, and rebuilds the net namespace
    while this process forks the tree.  None for a tree restore (its init rebuilds its
    namespaces), or when no helper can be forked (rebuilt in place then)."""
    if takeover is None:
        return None
    from lxc_cr.resources import ns_net
    try:
        return ns_net.Rebuild()
    except OSError:
        return None


def _build(ctx: RestoreCtx, takeover=None):
    from lxc_cr.resources import files, memory
    tasks = ctx.records["task"]
    root = tasks[0]
    if takeover is None:
        init_pid, init = _start_init(ctx)
    else:
        if root.pid != 1:
            raise RestoreFailed(f"{ctx.path}: the recorded root is pid {root.pid}, not a "
                                f"container's init")
        from lxc_cr.resources import namespaces
        init_pid = takeover()
        ctx.created.append(init_pid)
        init = _adopt_init(ctx, init_pid)
        kinds = namespaces.own_set(ctx.records) & {"uts", "ipc", "net"}
        if "net" in kinds and ctx.net is not None:
            ctx.net.start(init_pid, ctx.records)     # ready before a process is rebuilt
            kinds.discard("net")
        namespaces.setup_existing(init_pid, ctx.records, ctx.reader, kinds)
        from lxc_cr.resources import ns_time
        ns_time.check_takeover(ctx.records, init_pid)
    # every process is forked from the init (or from one forked from it) and inherits the
    # pin; each gets the init's own affinity back before it runs
    ctx.colo.pin([init_pid])
    free = ctx.colo.saved.get(init_pid)
    lives: list[Live] = []
    try:
        _setup_scratch(ctx, init, tasks)
        from lxc_cr.resources import signals
        # all inherit them; a manager's init stops right after its execve
        init_actions = signals.query(init.remote, ctx.scratch + 256) if takeover is None \
            else signals.after_exec(ctx.proc.status(init_pid))
        ctx.shmem_fds = memory.prepare_shmem(ctx, init.remote, init_pid)
        files.prepare(ctx, init_pid)     # resource modules' prepare(ctx): inherited objects
        from lxc_cr.resources import ns_cgroup
        ns_cgroup.prepare(ctx, init_pid)  # sub-cgroups below the init's, with their limits
        by_pid: dict[int, Live] = {}
        if root.pid == 1:
            live = Live(root, init_pid, sigactions=init_actions)
            ctx.host_pids[1] = init_pid
            live.mem_fd = init.mem_fd
            live.threads[1] = (init.tracee, init.remote)
            by_pid[1] = live
            lives.append(live)
            _session(ctx, live, None)
        else:
            init_live = Live(None, init_pid, sigactions=init_actions)
            init_live.threads[0] = (init.tracee, init.remote)
            by_pid[0] = init_live
        tree_pids = {t.pid for t in tasks}
        helpers: dict[int, Live] = {}
        for rec in tasks:
            if rec.pid in by_pid:
                continue
            parent = by_pid.get(rec.ppid) or by_pid.get(0)
            if parent is None:
                raise RestoreFailed(f"{ctx.path}: parent {rec.ppid} of pid {rec.pid} missing")
            if rec.sid and rec.sid != rec.pid and rec.sid not in tree_pids:
                parent = _session_helper(ctx, helpers, parent, rec)
            live = _fork(ctx, parent, rec)
            by_pid[rec.pid] = live
            lives.append(live)
            faults.step("restore", f"forked {rec.pid}")
        _end_helpers(ctx, helpers, by_pid)
        ctx.t_forked = time.monotonic()
        if root.pid != 1:
            if free is not None:
                ctx.colo.give([init_pid], free)
            _release_reaper(ctx, by_pid[0])
        if ctx.net is not None:
            ctx.net.wait()     # its devices and addresses, before a socket is made
        for live in lives:
            if live.rec.state != "Z":
                _rebuild(ctx, live)
                faults.step("restore", f"rebuilt {live.pid}")
        from lxc_cr.resources import ttys
        ttys.restore_foreground(ctx, by_pid)
        for live in lives:
            if live.rec.state != "Z":
                _credentials(ctx, live)
        faults.step("restore", "credentials")
        ns_cgroup.place(ctx, lives)      # each process into its recorded cgroups
        from lxc_cr.resources import tcp_established
        tcp_established.release(ctx)     # every end exists now: connections leave repair mode
        if free is not None:
            ctx.colo.give([tr.tid for live in lives for tr, _rm in live.threads.values()], free)
        _release(ctx, lives)
        return init_pid, lives
    finally:
        if init.go_w is not None:
            os.close(init.go_w)


class _Init:
    pass


def _start_init(ctx: RestoreCtx):
    """Fork the init of a fresh pid namespace; it sets up the other namespaces and blocks."""
    from lxc_cr.resources import namespaces
    from lxc_cr.resources import ns_time
    own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    ksys.unshare(ksys.CLONE_NEWPID)
    go_r, go_w = os.pipe()
    ready_r, ready_w = os.pipe()
    old_time = ns_time.enter_for_children(ctx.records)   # the init is born in it
    pid = os.fork()
    if pid:
        ctx.created.append(pid)
        ns_time.leave(old_time)
        # back to our own pid_for_children: the restorer may start threads, which the
        # kernel refuses (EINVAL) while it differs from the active pid namespace
        ksys.setns(own_pidns, ksys.CLONE_NEWPID)
        os.close(own_pidns)
    if pid == 0:                                        # the future init, pid 1
        try:
            os.close(go_w)
            os.close(ready_r)
            namespaces.setup_in_child(ctx.records, ctx.reader)
            os.write(ready_w, b"ok")
        except BaseException as e:                     # report and leave
            try:
                os.write(ready_w, f"namespace setup failed: {e}".encode()[:400])
            finally:
                os._exit(1)
        os.read(go_r, 1)          # blocked here until taken over (or released as reaper)
        while True:               # a reaper for a tree whose root is not pid 1
            try:
                os.wait()
            except ChildProcessError:
                os._exit(0)
            except InterruptedError:
                continue
    os.close(go_r)
    os.close(ready_w)
    msg = os.read(ready_r, 512)
    os.close(ready_r)
    init = _Init()
    init.go_w = go_w             # closing it lets a reaper init run on
    if msg != b"ok":
        os.waitpid(pid, 0)
        raise RestoreFailed(msg.decode(errors="replace") or "restore init died")
    init.tracee = Tracee.seize(pid, OPTIONS)
    init.tracee.interrupt()
    return pid, _init_remote(ctx, init, pid)


def _adopt_init(ctx: RestoreCtx, pid: int) -> "_Init":
    """A manager's init, already seized by the caller and stopped after its exec."""
    init = _Init()
    init.go_w = None
    init.tracee = Tracee(pid)
    init.tracee.state = init.tracee.state.__class__.STOPPED
    init.tracee.set_options(OPTIONS)
    return _init_remote(ctx, init, pid)


def _init_remote(ctx, init, pid):
    init.tracee.set_sigmask(ALL_SIGNALS)
    init.mem_fd = os.open(f"/proc/{pid}/mem", os.O_RDWR)
    maps = ctx.proc.maps(pid)
    vdso = [m for m in maps if m.path == "[vdso]"]
    ip = find_syscall_insn(init.mem_fd, vdso[0].start, vdso[0].end, pid) if vdso else None
    if ip is None:
        raise RestoreFailed("no syscall instruction in the restorer's vdso")
    init.base = init.tracee.getregs()
    init.remote = Remote(init.tracee, ip, init.base, init.mem_fd, keep_signals=False)
    _check_host(ctx, init, maps)
    ctx.inherit_base = _inherit_base(pid)
    return init


def _inherit_base(pid: int) -> int:
    """Lowest fd number for objects the init passes down to every task: high, so they
    never collide with recorded fd numbers, yet below the init's RLIMIT_NOFILE."""
    soft = 1024
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                v = line.split()[3]
                soft = 1 << 20 if v == "unlimited" else int(v)
    return max(64, min(soft - 256, 100000))


def _check_host(ctx, init, maps) -> None:
    from lxc_cr.resources import memory
    hdr = ctx.reader.header
    from lxc_cr.hostcompat import xstate_xcr0
    here = xstate_xcr0(init.tracee.get_xstate())
    want = getattr(hdr, "xcr0", 0) or 0
    if want & ~here:
        raise IncompatibleImage(ctx.path, f"the image needs xsave features {want:#x}, this "
                                f"CPU has {here:#x} (missing {want & ~here:#x})")
    size, digest = memory.vdso_fingerprint(init.mem_fd, maps, init.tracee.tid)
    if getattr(hdr, "vdso_size", 0) and (size != hdr.vdso_size or digest != bytes(hdr.vdso_hash)):
        raise IncompatibleImage(ctx.path, f"the vdso differs from the checkpoint's "
                                f"({size} vs {hdr.vdso_size} bytes): a different kernel")


def _setup_scratch(ctx, init, tasks) -> None:
    """A rwx page holding ``syscall`` at an address free in every recorded layout."""
    from lxc_cr.resources import memory
    ranges = [(v.start, v.end) for v in ctx.records["vma"]]
    ranges += [(m.start, m.end) for m in ctx.proc.maps(init.tracee.tid)]
    ctx.scratch = memory.free_address(ranges, PAGE)
    got = init.remote.call("mmap", ctx.scratch, PAGE, PROT_RWX, MAP_PRIVATE_ANON_FIXED_NOREPLACE,
                           -1, 0)
    if got != ctx.scratch:
        raise RestoreFailed(f"scratch page at {ctx.scratch:#x} mapped at {got:#x}")
    init.remote.write(ctx.scratch, b"\x0f\x05\xcc\xcc")
    init.remote.ip = ctx.scratch
    ctx.init_remote = init.remote


def _clone_args(ctx, remote, flags: int, exit_signal: int, set_tid: list[int]) -> int:
    base = ctx.scratch + 3072
    tids = base + 128
    remote.write(tids, struct.pack(f"<{len(set_tid)}i", *set_tid))
    args = struct.pack("<11Q", flags, 0, 0, 0, exit_signal, 0, 0, 0, tids, len(set_tid), 0)
    remote.write(base, args)
    return base


def _fork(ctx, parent: Live, rec) -> Live:
    """clone3 with set_tid injected into the parent; the child is auto-attached."""
    tracee, remote = next(iter(parent.threads.values()))
    from lxc_cr.resources import task as task_mod
    flags, want = task_mod.fork_flags(ctx, parent.rec, rec)   # nested pid ns: CLONE_NEWPID
    from lxc_cr.resources import files
    shared = files.clone_flags(ctx, parent.rec, rec)          # CLONE_FILES: parent's fd table
    args = _clone_args(ctx, remote, flags | shared, rec.exit_signal or signal.SIGCHLD,
                       list(reversed(rec.nspids)))            # one set_tid per level
    remote.children.clear()
    got = remote.call("clone3", args, 88)
    if remote.children:
        ctx.created.append(remote.children[-1][1])
    if got != want:
        raise RestoreFailed(f"clone3 gave pid {got}, wanted {want} (pid {rec.pid})")
    if not remote.children:
        raise RestoreFailed(f"no fork event for pid {rec.pid}")
    host = remote.children[-1][1]
    ctx.host_pids[rec.pid] = host
    task_mod.after_fork(ctx, remote, rec, host, got)
    child = Tracee.adopt(host)
    child.set_sigmask(ALL_SIGNALS)
    base = child.getregs()
    mem_fd = os.open(f"/proc/{host}/mem", os.O_RDWR)
    live = Live(rec, host, mem_fd, sigactions=parent.sigactions)
    live.threads[rec.pid] = (child, Remote(child, ctx.scratch, base, mem_fd, keep_signals=False))
    _session(ctx, live, parent)
    if rec.state == "Z":
        _make_zombie(ctx, live)
    return live


def _session(ctx, live: Live, parent: Live | None) -> None:
    """Make the process's session and process group what was recorded: it inherited its
    parent's; setsid() / setpgid() where the record differs (a manager's init may already
    lead its own session)."""
    rec = live.rec
    tracee, remote = live.threads[rec.pid]
    if len(rec.nspids) > 1:                     # in a nested pid namespace
        from lxc_cr.resources import task as task_mod
        return task_mod.session_nested(ctx, rec, live.host_pid, remote)
    cur_sid = remote.call("getsid", 0)
    if rec.sid == rec.pid and cur_sid != rec.pid:
        remote.call("setsid")
        cur_sid = rec.pid
    elif rec.sid != cur_sid and rec.sid != 0 and cur_sid != 0:
        raise RestoreFailed(f"pid {rec.pid}: session {rec.sid} is neither its own nor its "
                            f"parent's ({cur_sid}): not supported")
    cur_pgid = remote.call("getpgid", 0)
    if rec.pgid and rec.pgid != cur_pgid:
        remote.call("setpgid", 0, rec.pgid)


def _session_helper(ctx, helpers: dict, parent: Live, rec) -> Live:
    """A session whose leader is gone (e.g. busybox init's rcS, which started a daemon and
    exited): a short-lived helper with the leader's pid calls setsid() and forks the
    session's processes; when it exits they are re-parented to the init, as recorded."""
    from types import SimpleNamespace
    if rec.sid in helpers:
        return helpers[rec.sid]
    if parent.rec is not None and parent.rec.pid != 1 and not getattr(parent.rec, "child_subreaper", 0):
        raise RestoreFailed(f"pid {rec.pid}: its session {rec.sid} has no leader any more, "
                            f"and its parent {rec.ppid} is not the init: not supported")
    fake = SimpleNamespace(pid=rec.sid, ppid=parent.rec.pid if parent.rec else 0,
                           nspids=[rec.sid] + list(rec.nspids[1:]), sid=rec.sid,
                           pgid=rec.sid, exit_signal=signal.SIGCHLD, state="S")
    h = _fork(ctx, parent, fake)
    h.helper_parent = parent
    helpers[rec.sid] = h
    return h


def _end_helpers(ctx, helpers: dict, by_pid: dict) -> None:
    """Let every session helper exit and have its parent reap it (injected wait4)."""
    for sid, h in helpers.items():
        tracee, remote = h.threads[sid]
        remote.call("exit_group", 0, expect_exit=True)
        os.close(h.mem_fd)
        h.mem_fd = -1
        ptracee, premote = next(iter(h.helper_parent.threads.values()))
        premote.call("wait4", sid, 0, ksys.WALL, 0)


def _make_zombie(ctx, live: Live) -> None:
    status = live.rec.exit_code
    tracee, remote = live.threads[live.pid]
    remote.write(ctx.scratch + 256, live.rec.comm.encode()[:15] + b"\0")
    remote.call("prctl", 15, ctx.scratch + 256, 0, 0, 0)          # PR_SET_NAME
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):   # those are always SIG_DFL
            remote.write(ctx.scratch + 256, struct.pack("<QQQQ", 0, 0x04000000, 0, 0))
            remote.call("rt_sigaction", sig, ctx.scratch + 256, 0, 8)
        tracee.set_sigmask(0)
        remote.call("kill", live.rec.nspids[-1], sig, expect_exit=True)   # its own ns pid
    else:
        remote.call("exit_group", os.WEXITSTATUS(status) if os.WIFEXITED(status) else 0,
                    expect_exit=True)
    if tracee.state.value != "gone":      # delivered as a signal-stop: let it die
        from lxc_cr.kernel.ptrace import PTRACE_CONT
        tracee._resume(PTRACE_CONT, os.WTERMSIG(status))
        tracee.wait()
    os.close(live.mem_fd)
    live.mem_fd = -1
    live.threads.clear()


def _release_reaper(ctx, init_live: Live) -> None:
    from lxc_cr.resources import files
    tracee, remote = init_live.threads[0]
    files.release_inherited(ctx, remote)       # the reaper holds no pipe end or socket
    remote.call("munmap", ctx.scratch, PAGE)
    tracee.setregs(remote.base)
    tracee.set_sigmask(0)
    tracee.detach()
    init_live.threads.clear()


def _rebuild(ctx, live: Live) -> None:
    from lxc_cr.resources import files, memory, signals, task as task_mod, ttys  # noqa: F401
    from lxc_cr.resources import threads as threads_mod
    from lxc_cr.resources.threads import unregister_rseq
    leader, remote = live.threads[live.pid]
    unregister_rseq(leader, remote)
    memory.restore(ctx, live, remote)
    signals.restore(ctx, live, remote)
    task_mod.restore(ctx, live.rec, remote)
    keep = set()
    files.restore(ctx, live, remote, keep)
    trecs = ctx.by_pid("thread", live.pid)
    task_mod.before_threads(ctx, live.rec, remote)   # threads need its own pid ns
    for th in trecs:
        if th.tid == live.pid:
            continue
        args = _clone_args(ctx, remote, THREAD_FLAGS, 0, list(reversed(th.nstids)))
        remote.children.clear()
        remote.call("clone3", args, 88)
        if not remote.children:
            raise RestoreFailed(f"no clone event for thread {th.tid} of pid {live.pid}")
        t = Tracee.adopt(remote.children[-1][1], pid=live.host_pid)
        t.set_sigmask(ALL_SIGNALS)
        live.threads[th.tid] = (t, Remote(t, ctx.scratch, t.getregs(), live.mem_fd,
                                          keep_signals=False))
    task_mod.after_threads(ctx, live.rec, remote)    # its recorded pid_for_children
    for th in trecs:
        tr, rm = live.threads[th.tid]
        threads_mod.restore(ctx, live, th, tr, rm)
    signals.restore_pending(ctx, live, None,
                            {tid: rm for tid, (tr, rm) in live.threads.items()})


def _credentials(ctx, live: Live) -> None:
    from lxc_cr.resources import creds, task as task_mod
    for c in ctx.by_pid("creds", live.pid):
        tr, rm = live.threads[c.tid]
        creds.restore(ctx, c, rm)
    task_mod.restore_late(ctx, live.rec, live.threads[live.pid][1])


def _release(ctx, lives: list[Live]) -> None:
    from lxc_cr.resources.threads import final_regs
    for live in lives:
        if not live.threads:
            continue
        trecs = {th.tid: th for th in ctx.by_pid("thread", live.pid)}
        order = [tid for tid in live.threads if tid != live.pid] + [live.pid]
        for tid in order:
            tr, rm = live.threads[tid]
            regs = final_regs(trecs[tid])
            if tid == live.pid:
                rm.call_at_exit("munmap", ctx.scratch, PAGE, final=regs)
            else:
                tr.setregs(regs)
            tr.set_sigmask(trecs[tid].sigmask)
    for live in lives:
        for tr, rm in live.threads.values():
            tr.detach()
        if live.mem_fd >= 0:
            os.close(live.mem_fd)
            live.mem_fd = -1


def _kill_all(created: list[int]) -> None:
    """Leave nothing half-built behind: kill the namespace's init and every task."""
    for p in created:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    reap(created)
