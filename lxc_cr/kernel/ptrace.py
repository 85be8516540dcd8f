"""ptrace: a traced thread as an explicit state machine, and syscalls injected into it.

States: RUNNING (seized, not stopped) -> STOPPED (in a ptrace stop we control) ->
DETACHED, or GONE when the thread exited.  Detaching is explicit (``detach()``) and is
done by the orchestrators in ``finally`` blocks, never in ``__del__``.

Injected syscalls (``Remote.call``) set the registers so that rip points at a ``syscall``
instruction (0x0f 0x05) and single-step over it (kernel-facts: remote syscalls).
"""

from __future__ import annotations

import ctypes
import enum
import os
import signal
import struct
import time

from lxc_cr.errors import KernelError, OperationFailed, TaskGone
from lxc_cr.kernel.sys import nr, ptrace, waitpid

PTRACE_CONT = 7
PTRACE_SINGLESTEP = 9
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_DETACH = 17
PTRACE_SYSCALL = 24
ALL_SIGNALS = (1 << 64) - 1 & ~((1 << 8) | (1 << 18))   # all but SIGKILL, SIGSTOP
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETEVENTMSG = 0x4201
PTRACE_GETSIGINFO = 0x4202
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_PEEKSIGINFO = 0x4209
PTRACE_GETSIGMASK = 0x420A
PTRACE_SETSIGMASK = 0x420B
PTRACE_GET_RSEQ_CONFIGURATION = 0x420F
PTRACE_PEEKSIGINFO_SHARED = 1

O_TRACESYSGOOD = 0x1
O_TRACEFORK = 0x2
O_TRACEVFORK = 0x4
O_TRACECLONE = 0x8
O_TRACEEXEC = 0x10
O_TRACEEXIT = 0x40
O_EXITKILL = 0x100000

EVENT_FORK = 1
EVENT_VFORK = 2
EVENT_CLONE = 3
EVENT_EXEC = 4
EVENT_EXIT = 6
EVENT_STOP = 128

NT_X86_XSTATE = 0x202
XSTATE_MAX = 64 * 1024

REG_NAMES = ("r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs "
             "eflags rsp ss fs_base gs_base ds es fs gs").split()


class Regs(ctypes.Structure):
    """struct user_regs_struct (x86_64)."""
    _fields_ = [(n, ctypes.c_ulonglong) for n in REG_NAMES]

    def as_list(self) -> list[int]:
        return [getattr(self, n) for n in REG_NAMES]

    @classmethod
    def from_list(cls, values) -> "Regs":
        r = cls()
        for n, v in zip(REG_NAMES, values):
            setattr(r, n, v & 0xFFFFFFFFFFFFFFFF)
        return r

    def copy(self) -> "Regs":
        return Regs.from_buffer_copy(self)      # one memcpy (every injected call makes one)


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _RseqConfig(ctypes.Structure):
    _fields_ = [("rseq_abi_pointer", ctypes.c_uint64), ("rseq_abi_size", ctypes.c_uint32),
                ("signature", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("pad", ctypes.c_uint32)]


class _PeekSiginfoArgs(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("flags", ctypes.c_uint32), ("nr", ctypes.c_int32)]


class State(enum.Enum):
    RUNNING = "running"      # seized, not in a stop we control
    STOPPED = "stopped"
    DETACHED = "detached"
    GONE = "gone"


class Stop:
    """What waitpid reported for a traced thread."""

    def __init__(self, status: int):
        self.status = status
        self.exited = os.WIFEXITED(status) or os.WIFSIGNALED(status)
        self.sig = os.WSTOPSIG(status) if os.WIFSTOPPED(status) else 0
        self.event = (status >> 16) & 0xFF if os.WIFSTOPPED(status) else 0

    def __repr__(self):
        return f"Stop(status={self.status:#x}, sig={self.sig}, event={self.event})"


# How long a dump waits for an interrupted thread to stop.  A thread stops at once unless
# it waits in the kernel in a sleep that only SIGKILL ends, on something another stopped
# thread would have to do (a vfork() parent whose child we hold, a FUSE request); then
# waiting longer would only keep the whole tree stopped: the dump fails naming it, and
# the tree runs on.
STOP_PATIENCE = 10.0


class Tracee:
    """One traced thread."""

    def __init__(self, tid: int, pid: int | None = None):
        self.tid = tid
        self.pid = pid if pid is not None else tid
        self.state = State.RUNNING
        self.intercepted: list[bytes] = []    # siginfos dequeued while we had it stopped
        self.group_stopped = False            # it was in a group-stop (SIGSTOP) when stopped
        self.exit_status: int | None = None

    # --- attaching -------------------------------------------------------------------------
    @classmethod
    def seize(cls, tid: int, options: int = 0, pid: int | None = None) -> "Tracee":
        t = cls(tid, pid)
        try:
            ptrace(PTRACE_SEIZE, tid, 0, options, op="PTRACE_SEIZE")
        except KernelError as e:
            # ESRCH: gone; EPERM for a task that has exited meanwhile (a zombie cannot be
            # attached to), which the caller takes for one that went away too
            if e.errno == 3 or e.errno == 1 and _exited(tid):
                raise TaskGone(tid) from None
            raise
        return t

    @classmethod
    def adopt(cls, tid: int, pid: int | None = None) -> "Tracee":
        """A thread auto-attached through PTRACE_O_TRACECLONE/FORK; waits for its first stop."""
        t = cls(tid, pid)
        t.wait_event_stop()
        return t

    def interrupt(self, wait: bool = True) -> None:
        """PTRACE_INTERRUPT and (unless ``wait`` is false: a frozen cgroup's task stops only
        once thawed) wait until the thread is in an event stop."""
        ptrace(PTRACE_INTERRUPT, self.tid, op="PTRACE_INTERRUPT")
        if wait:
            self.wait_event_stop()

    def wait(self, deadline: float | None = None) -> Stop:
        """The thread's next stop (or exit).  With a ``deadline`` (time.monotonic(), at
        most STOP_PATIENCE after the interrupt), raise OperationFailed naming the thread,
        its state and where it waits if none came by then."""
        if deadline is None:
            _, status = waitpid(self.tid)
        else:
            status = self._wait_until(deadline)
        st = Stop(status)
        if st.exited:
            self.state = State.GONE
            self.exit_status = status
        else:
            self.state = State.STOPPED
        return st

    def _wait_until(self, deadline: float) -> int:
        """waitpid's status, polled: no wait has a timeout.  Every 50 us for the first
        20 ms (a thread stops within microseconds of being let run: the dump's own time
        stays as with a blocking wait), then more slowly."""
        delay, slow_from = 0.00005, time.monotonic() + 0.02
        while True:
            got, status = waitpid(self.tid, os.WNOHANG)
            if got:
                return status
            now = time.monotonic()
            if now >= deadline:
                raise OperationFailed(f"pid {self.pid} {_stuck(self.tid)}", pid=self.pid,
                                      tid=self.tid)
            time.sleep(delay)
            if now > slow_from:
                delay = min(delay * 2, 0.002)

    def wait_event_stop(self, deadline: float | None = None) -> None:
        """Wait for a PTRACE_EVENT_STOP, keeping any signal dequeued on the way; by
        ``deadline`` if one is given (``wait``).

        A signal-delivery-stop on the way means the thread dequeued a signal.  It is handed
        back while the thread blocks every signal, so the kernel queues it again with its
        siginfo (ptrace_signal requeues a blocked signal) and the pending interrupt trap
        stops the thread; the thread's mask is put back at that stop.  The signal stays
        pending in the kernel, not only in our memory: if lxc-cr dies (SIGKILL) while the
        tree is stopped, the detached thread still receives it.  Only SIGSTOP, which cannot
        be blocked, is kept here and sent again at detach.  (A death in the instant between
        blocking and the event stop would leave the thread's signals blocked.)"""
        mask = None
        while True:
            st = self.wait(deadline)
            if st.exited:
                raise TaskGone(self.tid, "exited while being stopped")
            if st.event == EVENT_STOP:
                if mask is not None:
                    self.set_sigmask(mask)
                self.group_stopped = st.sig in (signal.SIGSTOP, signal.SIGTSTP,
                                                signal.SIGTTIN, signal.SIGTTOU)
                return
            if st.event == 0 and st.sig == signal.SIGSTOP:
                self.intercepted.append(self.getsiginfo())
                self._resume(PTRACE_CONT, 0)
                continue
            if st.event == 0 and st.sig not in (0, signal.SIGTRAP):
                if mask is None:
                    mask = self.get_sigmask()
                    self.set_sigmask(ALL_SIGNALS)
                self._resume(PTRACE_CONT, st.sig)
                continue
            self._resume(PTRACE_CONT, 0)

    def _resume(self, request: int, sig: int = 0) -> None:
        ptrace(request, self.tid, 0, sig, op="ptrace-resume")
        self.state = State.RUNNING

    def set_options(self, options: int) -> None:
        ptrace(PTRACE_SETOPTIONS, self.tid, 0, options, op="PTRACE_SETOPTIONS")

    def detach(self, sig: int = 0) -> None:
        if self.state in (State.DETACHED, State.GONE):
            return
        try:
            ptrace(PTRACE_DETACH, self.tid, 0, sig, op="PTRACE_DETACH")
        except KernelError as e:
            if e.errno != 3:       # ESRCH: gone or not stopped
                raise
        self.state = State.DETACHED

    # --- registers and thread state --------------------------------------------------------
    def getregs(self) -> Regs:
        r = Regs()
        ptrace(PTRACE_GETREGS, self.tid, 0, r, op="PTRACE_GETREGS")
        return r

    def setregs(self, r: Regs) -> None:
        ptrace(PTRACE_SETREGS, self.tid, 0, r, op="PTRACE_SETREGS")

    def get_xstate(self) -> bytes:
        buf = ctypes.create_string_buffer(XSTATE_MAX)
        iov = _Iovec(ctypes.cast(buf, ctypes.c_void_p), XSTATE_MAX)
        ptrace(PTRACE_GETREGSET, self.tid, NT_X86_XSTATE, iov, op="PTRACE_GETREGSET")
        return buf.raw[:iov.len]

    def set_xstate(self, data: bytes) -> None:
        buf = ctypes.create_string_buffer(data, len(data))
        iov = _Iovec(ctypes.cast(buf, ctypes.c_void_p), len(data))
        ptrace(PTRACE_SETREGSET, self.tid, NT_X86_XSTATE, iov, op="PTRACE_SETREGSET")

    def get_sigmask(self) -> int:
        m = ctypes.c_uint64()
        ptrace(PTRACE_GETSIGMASK, self.tid, 8, ctypes.cast(ctypes.byref(m), ctypes.c_void_p),
               op="PTRACE_GETSIGMASK")
        return m.value

    def set_sigmask(self, mask: int) -> None:
        m = ctypes.c_uint64(mask)
        ptrace(PTRACE_SETSIGMASK, self.tid, 8, ctypes.cast(ctypes.byref(m), ctypes.c_void_p),
               op="PTRACE_SETSIGMASK")

    def get_rseq(self) -> tuple[int, int, int, int]:
        """(address, length, signature, flags) of the thread's rseq registration."""
        c = _RseqConfig()
        ptrace(PTRACE_GET_RSEQ_CONFIGURATION, self.tid, ctypes.sizeof(c), c,
               op="PTRACE_GET_RSEQ_CONFIGURATION")
        return c.rseq_abi_pointer, c.rseq_abi_size, c.signature, c.flags

    def getsiginfo(self) -> bytes:
        buf = ctypes.create_string_buffer(128)
        ptrace(PTRACE_GETSIGINFO, self.tid, 0, buf, op="PTRACE_GETSIGINFO")
        return buf.raw

    def peek_siginfo(self, shared: bool) -> list[bytes]:
        """Pending siginfos without dequeuing them (PTRACE_PEEKSIGINFO)."""
        out: list[bytes] = []
        buf = ctypes.create_string_buffer(128 * 32)
        while True:
            args = _PeekSiginfoArgs(len(out), PTRACE_PEEKSIGINFO_SHARED if shared else 0, 32)
            n = ptrace(PTRACE_PEEKSIGINFO, self.tid,
                       ctypes.cast(ctypes.byref(args), ctypes.c_void_p), buf,
                       op="PTRACE_PEEKSIGINFO")
            if n <= 0:
                return out
            raw = buf.raw
            out.extend(raw[i * 128:(i + 1) * 128] for i in range(n))

    def geteventmsg(self) -> int:
        v = ctypes.c_ulong()
        ptrace(PTRACE_GETEVENTMSG, self.tid, 0, ctypes.cast(ctypes.byref(v), ctypes.c_void_p),
               op="PTRACE_GETEVENTMSG")
        return v.value


class RemoteError(KernelError):
    """An injected syscall returned an error."""


class Remote:
    """Syscalls executed by a stopped tracee, and access to its memory.

    ``syscall_ip`` is an executable address holding 0x0f 0x05.  ``base`` are the registers
    the injections start from (their rsp is kept so the kernel sees a sane stack).
    """

    def __init__(self, tracee: Tracee, syscall_ip: int, base: Regs, mem_fd: int,
                 keep_signals: bool = True):
        self.t = tracee
        self.ip = syscall_ip
        self.base = base
        self.mem = mem_fd
        self.keep_signals = keep_signals
        self.children: list[tuple[int, int]] = []     # (event, new tid) from clone events

    def _load(self, name: str, args) -> None:
        """Registers for ``name(*args)`` at the syscall instruction (x86_64 ABI)."""
        r = self.base.copy()
        r.rax = nr(name)
        r.orig_rax = 0xFFFFFFFFFFFFFFFF
        r.rip = self.ip
        for reg, v in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args):
            setattr(r, reg, v & 0xFFFFFFFFFFFFFFFF)
        self.t.setregs(r)

    def _result(self, name: str, args) -> int:
        ret = self.t.getregs().rax
        if ret >= 2 ** 63:
            ret -= 2 ** 64
        if -4096 < ret < 0:
            raise RemoteError(name, -ret, pid=self.t.tid, args=args)
        return ret

    def call(self, name: str, *args: int, expect_exit: bool = False) -> int:
        self._load(name, args)
        self.t._resume(PTRACE_SINGLESTEP)
        while True:
            st = self.t.wait()
            if st.exited:
                if expect_exit:
                    return 0
                raise TaskGone(self.t.tid, f"exited during injected {name}()")
            if st.event in (EVENT_FORK, EVENT_VFORK, EVENT_CLONE):
                self.children.append((st.event, self.t.geteventmsg()))
                self.t._resume(PTRACE_SINGLESTEP)
                continue
            if st.event == EVENT_EXIT:
                self.t._resume(PTRACE_SINGLESTEP)
                continue
            if st.event == EVENT_STOP:
                self.t._resume(PTRACE_SINGLESTEP)
                continue
            if st.sig == signal.SIGTRAP:
                break
            if self.keep_signals:
                self.t.intercepted.append(self.t.getsiginfo())
            self.t._resume(PTRACE_SINGLESTEP)
        return self._result(name, args)

    def call_at_exit(self, name: str, *args: int, final: Regs) -> None:
        """Run the last syscall with PTRACE_SYSCALL, stop at its exit, then set ``final``.

        Used for the munmap of the scratch page that holds the syscall instruction itself.
        """
        self._load(name, args)
        self._through_syscall(name)
        self._result(name, args)
        self.t.setregs(final)

    def _through_syscall(self, name: str, expect_exit: bool = False) -> bool:
        """Resume the loaded syscall with PTRACE_SYSCALL to its syscall-entry stop, then to
        its syscall-exit stop (event stops on the way are passed; a clone event's new tid
        goes to ``children``).  False if the thread exited and ``expect_exit`` allows it."""
        for _ in range(2):
            self.t._resume(PTRACE_SYSCALL)
            while True:
                st = self.t.wait()
                if st.exited:
                    if expect_exit:
                        return False
                    raise TaskGone(self.t.tid, f"exited during injected {name}()")
                if st.sig == (signal.SIGTRAP | 0x80) or (st.sig == signal.SIGTRAP and st.event == 0):
                    break
                if st.event in (EVENT_FORK, EVENT_VFORK, EVENT_CLONE):
                    self.children.append((st.event, self.t.geteventmsg()))
                self.t._resume(PTRACE_SYSCALL)
        return True

    # --- memory -------------------------------------------------------------------------------
    def read(self, addr: int, n: int) -> bytes:
        return pread_mem(self.mem, addr, n, self.t.tid)

    def write(self, addr: int, data: bytes) -> None:
        pwrite_mem(self.mem, addr, data, self.t.tid)


class Colocation:
    """The tracer's thread and its tracees on one CPU while syscalls are injected.

    An injected syscall is a hand-over and back: the tracer resumes the tracee and waits,
    the tracee runs the syscall and stops, the tracer wakes.  On two CPUs the scheduler
    soon runs them on different ones, and then every hand-over waits for the other CPU to
    wake up (an inter-processor interrupt; on a virtual machine, through the hypervisor):
    8000 getppid calls in a row took 50-170 us each after the first 2000, 20 us each with
    both pinned to one CPU (issue #11).

    ``pin(tids)`` pins the calling thread and ``tids`` to one CPU that all may use, saving
    each tracee's affinity in ``saved``; ``give(tids, mask)`` sets a mask on threads that
    inherited the pin (a restored tree's clone3'd tasks); ``unpin()`` gives every thread
    pinned here its own mask back.  Best effort throughout: a thread that refuses (gone, a
    SCHED_DEADLINE task, a cpuset without that CPU) keeps its affinity, and the calls are
    only slower.  A thread this process starts while pinned inherits the pin: one that
    should run beside it (the page reader) asks for ``free_affinity()``."""

    def __init__(self):
        self.cpu: int | None = None
        self.me = 0                        # the tracer's thread, pinned with them
        self.mine: set | None = None       # its affinity before
        self.saved: dict[int, set] = {}    # tracee tid -> its affinity before

    def pin(self, tids) -> None:
        import threading
        tids = list(tids)
        try:
            if self.cpu is None:
                me = threading.get_native_id()
                mine = os.sched_getaffinity(me)
                common = mine & os.sched_getaffinity(tids[0]) if tids else mine
                if not common:
                    return
                here = _current_cpu()
                cpu = here if here in common else min(common)
                os.sched_setaffinity(me, {cpu})
                self.cpu, self.me, self.mine = cpu, me, mine
                _free[0] = mine
        except OSError:
            return
        for tid in tids:
            try:
                before = os.sched_getaffinity(tid)
                os.sched_setaffinity(tid, {self.cpu})
            except OSError:
                continue
            self.saved.setdefault(tid, before)

    def give(self, tids, mask) -> None:
        for tid in tids:
            try:
                os.sched_setaffinity(tid, mask)
            except OSError:
                pass
            self.saved.pop(tid, None)

    def unpin(self, tracees: bool = True) -> None:
        """Every pinned thread's own mask back (``tracees=False``: only the tracer's,
        the tracees being dead)."""
        for tid, mask in list(self.saved.items()) if tracees else []:
            try:
                os.sched_setaffinity(tid, mask)
            except OSError:
                pass
        if self.mine is not None:
            try:
                os.sched_setaffinity(self.me, self.mine)
            except OSError:
                pass
        self.saved.clear()
        self.cpu = self.mine = None
        _free[0] = None


_free: list = [None]          # the tracer's affinity before a Colocation pinned it


def affinities(tids) -> dict[int, set]:
    """{tid: its CPU affinity} of those threads that are still there."""
    out = {}
    for tid in tids:
        try:
            out[tid] = os.sched_getaffinity(tid)
        except OSError:
            continue
    return out


def free_affinity() -> set:
    """The CPUs this process may use, whether or not a Colocation has pinned it."""
    return _free[0] or os.sched_getaffinity(0)


def _exited(tid: int) -> bool:
    """Is the thread a zombie, dead, or gone (/proc/TID/stat)?"""
    try:
        with open(f"/proc/{tid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def _stuck(tid: int) -> str:
    """``(comm) thread T did not stop within N s (state S, in wchan)``: a thread that did
    not stop, as /proc shows it (the cold path of an error)."""
    from lxc_cr.kernel.procfs import Proc
    proc = Proc()
    try:
        st = proc.stat(tid)
        wchan = proc.read(tid, "wchan").decode().strip()
    except OperationFailed:                 # TaskGone too
        return f"(?) thread {tid} did not stop within {STOP_PATIENCE:g} s (gone)"
    where = f"state {st.state}, in {wchan}" if wchan not in ("", "0") else f"state {st.state}"
    return f"({st.comm}) thread {tid} did not stop within {STOP_PATIENCE:g} s ({where})"


def _current_cpu() -> int:
    """The CPU the calling thread runs on (field 39 of /proc/thread-self/stat)."""
    with open("/proc/thread-self/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[36])


def reap(tids, timeout: float = 10.0) -> list[int]:
    """Collect exit notifications of killed (traced or child) threads, bounded in time: a
    thread-group leader is reported only once its other threads are gone.  Returns the
    tids still not reaped."""
    import time
    pending = set(tids)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for tid in list(pending):
            try:
                got, _ = os.waitpid(tid, os.WNOHANG | 0x40000000)
            except ChildProcessError:
                got = tid
            if got:
                pending.discard(tid)
        if pending:
            time.sleep(0.001)
    return sorted(pending)


def pread_mem(fd: int, addr: int, n: int, pid: int) -> bytes:
    try:
        data = os.pread(fd, n, addr)
    except OSError as e:
        raise KernelError("pread(/proc/PID/mem)", e.errno, pid=pid, args=(addr, n)) from None
    if len(data) != n:
        raise OperationFailed(f"pid {pid}: short read of memory at {addr:#x}", pid=pid)
    return data


def pwrite_mem(fd: int, addr: int, data, pid: int) -> None:
    try:
        n = os.pwrite(fd, data, addr)
    except OSError as e:
        raise KernelError("pwrite(/proc/PID/mem)", e.errno, pid=pid, args=(addr, len(data))) from None
    if n != len(data):
        raise OperationFailed(f"pid {pid}: short write of memory at {addr:#x}", pid=pid)


def find_syscall_insn(mem_fd: int, start: int, end: int, pid: int) -> int | None:
    """Address of a 0x0f 0x05 byte pair inside [start, end) (e.g. the vdso)."""
    data = pread_mem(mem_fd, start, end - start, pid)
    i = data.find(b"\x0f\x05")
    return None if i < 0 else start + i


# The dump's way back for a thread whose tracer dies in the middle of an injected syscall.
# Each thread of a task being dumped gets its own copy (in an RWX mapping of its own task;
# the leader's first and last calls, which make and remove that mapping, run from a copy in
# the padding after its vdso's ELF image).  Its first instruction is the ``syscall`` every
# injected call runs; the tracer normally takes the thread back at that syscall's exit stop
# and puts its registers back.  Only if the tracer is gone does the thread run on past it,
# and then the rest puts it back by itself: rt_sigprocmask(SIG_SETMASK, saved mask), all general
# registers and rflags from the saved slots, its stack pointer, and a jump to where it was
# stopped (an interrupted syscall rewound to restart, as the kernel would have done).
# Assembled from (Intel syntax):
#     00 syscall                      ; the injected call
#     02 mov eax, 14                  ; rt_sigprocmask
#     07 mov edi, 2                   ; SIG_SETMASK
#     0c lea rsi, [rip + mask]        ; 0x80
#     13 xor edx, edx
#     15 mov r10d, 8
#     1b syscall
#     1d lea rsp, [rip + gprs]        ; 0x88
#     24 pop rax, rbx, rcx, rdx, rsi, rdi, rbp, r8 ... r15
#     3b popfq                        ; 0x100
#     3c mov rsp, [rip + rsp_slot]    ; 0x108
#     43 jmp qword ptr [rip + rip_slot]   ; 0x110
_TRAMPOLINE_CODE = bytes.fromhex(
    "0f05b80e000000bf02000000488d356d00000031d241ba080000000f05488d2564000000585b595a5e5f"
    "5d41584159415a415b415c415d415e415f9d488b25c5000000ff25c7000000")
_TRAMPOLINE_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp",
                    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
TRAMPOLINE_SIZE = 512                  # the spacing of trampolines in a page
TRAMPOLINE_USED = 0x80 + 19 * 8        # code, then mask, 15 registers, rflags, rsp, rip
_RESTART = {512, 513, 514}            # -ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND
_RESTARTBLOCK, _NR_RESTART_SYSCALL = 516, 219


def trampoline(regs: Regs, sigmask: int) -> bytes:
    """The TRAMPOLINE_USED bytes of one thread's way back to ``regs`` and ``sigmask``."""
    r = regs.copy()
    ax = r.rax - 2 ** 64 if r.rax >= 2 ** 63 else r.rax
    if r.orig_rax < 2 ** 63 and -ax in _RESTART | {_RESTARTBLOCK}:
        # stopped in an interrupted syscall: the kernel would restart it on the way out
        r.rax = _NR_RESTART_SYSCALL if -ax == _RESTARTBLOCK else r.orig_rax
        r.rip -= 2
    slots = [sigmask] + [getattr(r, n) for n in _TRAMPOLINE_GPRS] + [r.eflags, r.rsp, r.rip]
    return _TRAMPOLINE_CODE.ljust(0x80, b"\xcc") + struct.pack(f"<{len(slots)}Q", *slots)


# Code run by a short-lived thread of a stopped task (GuardedRemote.in_new_thread), where
# one injected syscall per item would cost two ptrace stops each.  The thread the clone() is
# injected into never runs past it while lxc-cr lives: its exit stop is taken and its
# registers put back.  If lxc-cr is gone, it goes to its trampoline's way back (``back``);
# the new thread (rax 0) runs ``body``, which must end in exit(2) of the thread alone:
#     00 syscall                      ; clone(THREAD_CLONE_FLAGS, 0, 0, 0, 0, arg in r9)
#     02 test rax, rax
#     05 jnz back                     ; the caller, or a failed clone
#     0b body...                      ; the new thread: r9 = arg, no stack used
CLONE_VM, CLONE_FS, CLONE_FILES, CLONE_SIGHAND = 0x100, 0x200, 0x400, 0x800
CLONE_THREAD, CLONE_SYSVSEM = 0x10000, 0x40000
THREAD_CLONE_FLAGS = (CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD
                      | CLONE_SYSVSEM)


def thread_code(at: int, back: int, body: bytes) -> bytes:
    """The bytes to write at ``at`` for GuardedRemote.in_new_thread (see above)."""
    return b"\x0f\x05\x48\x85\xc0\x0f\x85" + struct.pack("<i", back - (at + 11)) + body


class GuardedRemote(Remote):
    """Injected syscalls that leave the thread as it was between calls, so that if lxc-cr
    dies (SIGKILL) while the tree is stopped, every thread the kernel detaches runs on from
    where it was stopped:

    - all signals are blocked only during a call; the thread's own registers and signal
      mask are back right after it;
    - the syscall is run with PTRACE_SYSCALL (entry stop, exit stop), not single-stepped:
      a tracer's death detaches without clearing the trap flag a PTRACE_SINGLESTEP leaves
      set (exit_ptrace skips ptrace_disable), and the thread would die of SIGTRAP at its
      next instruction;
    - once ``ip`` is the thread's trampoline (see ``trampoline``), a death during a call
      leaves the thread on a path back to its own registers and mask; the order of the
      register and mask changes below keeps that true at every instant.

    Needs PTRACE_O_TRACESYSGOOD.
    """

    def __init__(self, tracee, syscall_ip, base, mem_fd, sigmask: int):
        super().__init__(tracee, syscall_ip, base, mem_fd)
        self.sigmask = sigmask

    def call(self, name: str, *args: int, expect_exit: bool = False) -> int:
        self._load(name, args)          # registers first: the trampoline restores the mask
        try:
            self.t.set_sigmask(ALL_SIGNALS)
            if not self._through_syscall(name, expect_exit):
                return 0
            return self._result(name, args)
        finally:
            if self.t.state.value == "stopped":
                self.t.set_sigmask(self.sigmask)    # mask first: the registers still lead back
                self.t.setregs(self.base)

    def in_new_thread(self, code_at: int, arg: int) -> int:
        """Run the code at ``code_at`` (``thread_code``, with ``back`` this thread's
        trampoline) in a new thread of the task, ``arg`` in its r9; return its exit status
        once it has exited.  The thread is traced from its start (PTRACE_O_TRACECLONE, only
        for this call) and continued with PTRACE_CONT: no stop until its exit, and if
        lxc-cr dies meanwhile it is detached like any other, runs to its exit(2) and is
        gone.  It inherits this thread's mask during the call, every signal blocked.  A
        clone() that fails (a pids limit) raises RemoteError; nothing was started then."""
        ip = self.ip
        self.t.set_options(O_TRACESYSGOOD | O_TRACECLONE)
        self.children.clear()
        try:
            self.ip = code_at
            self.call("clone", THREAD_CLONE_FLAGS, 0, 0, 0, 0, arg)
        except BaseException:
            for _event, tid in self.children:     # made, but the call failed after it
                _let_run(tid, self.t.pid)
            raise
        finally:
            self.ip = ip
            if self.t.state.value == "stopped":
                self.t.set_options(O_TRACESYSGOOD)
        if not self.children:
            raise OperationFailed(f"pid {self.t.tid}: no clone event for the helper thread",
                                  pid=self.t.tid)
        helper = Tracee.adopt(self.children[-1][1], pid=self.t.pid)
        helper._resume(PTRACE_CONT)
        while True:
            st = helper.wait()
            if st.exited:
                return os.WEXITSTATUS(helper.exit_status) if os.WIFEXITED(helper.exit_status) \
                    else -1
            # a SIGSTOP (it blocks every other signal) goes on to stop the process as sent
            helper._resume(PTRACE_CONT, st.sig if st.event == 0 and st.sig != signal.SIGTRAP
                           else 0)


def _let_run(tid: int, pid: int) -> None:
    """Detach a helper thread at its first stop: it runs its code to its exit by itself."""
    try:
        Tracee.adopt(tid, pid=pid).detach()
    except (KernelError, TaskGone):
        pass
