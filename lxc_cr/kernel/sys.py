"""The narrow ctypes surface of lxc-cr: raw syscalls and ptrace.

All raw syscalls go through ``syscall()``: it clears errno first, turns -1/errno into a
KernelError naming the operation, the pid and the arguments.  ``ptrace()`` does the same
for PEEK-style requests where -1 is a valid result.
"""

from __future__ import annotations

import ctypes
import os

from lxc_cr.errors import KernelError

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)

_NR: dict[str, int] | None = None


def nr(name: str) -> int:
    """Syscall number of ``name`` on x86_64 (from the generated table)."""
    global _NR
    if _NR is None:
        from lxc_cr.kernel._syscalls_x86_64 import SYSCALLS
        _NR = SYSCALLS
    try:
        return _NR[name]
    except KeyError:
        raise KernelError(name, 38, detail="unknown syscall") from None


_CArg = type(ctypes.byref(ctypes.c_int()))


def _arg(a):
    if isinstance(a, (ctypes._SimpleCData, _CArg)):
        return a
    if isinstance(a, (bytes, bytearray)) or hasattr(a, "_type_") or isinstance(a, ctypes.Array):
        return a
    if isinstance(a, ctypes.Structure):
        return ctypes.byref(a)
    if a is None:
        return ctypes.c_void_p(0)
    return ctypes.c_long(a)


def syscall(name: str, *args, pid: int | None = None) -> int:
    """Run syscall ``name`` in this process; raise KernelError on failure."""
    ctypes.set_errno(0)
    r = _libc.syscall(ctypes.c_long(nr(name)), *[_arg(a) for a in args])
    if r == -1:
        err = ctypes.get_errno()
        if err:
            raise KernelError(name, err, pid=pid, args=tuple(_plain(a) for a in args))
    return r


def _plain(a):
    return a if isinstance(a, (int, str, bytes)) else type(a).__name__


def ptrace(request: int, pid: int, addr=0, data=0, *, op: str = "ptrace") -> int:
    """ptrace(2); errno is cleared first so PEEK results of -1 are told apart."""
    ctypes.set_errno(0)
    a = addr if isinstance(addr, (ctypes.c_void_p, ctypes._Pointer)) else ctypes.c_void_p(addr)
    if isinstance(data, ctypes.Structure) or isinstance(data, ctypes.Array):
        d = ctypes.cast(ctypes.byref(data), ctypes.c_void_p)
    elif isinstance(data, ctypes.c_void_p):
        d = data
    else:
        d = ctypes.c_void_p(data)
    r = _libc.ptrace(request, pid, a, d)
    if r == -1:
        err = ctypes.get_errno()
        if err:
            raise KernelError(op, err, pid=pid, args=(request,))
    return r


SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing a file range's dirty pages to disk without waiting for it
    (sync_file_range(2) with SYNC_FILE_RANGE_WRITE only).  A hint: the data is durable only
    after fsync."""
    syscall("sync_file_range", fd, offset, length, SYNC_FILE_RANGE_WRITE)


def prctl(option: int, a2=0, a3=0, a4=0, a5=0) -> int:
    return syscall("prctl", option, a2, a3, a4, a5)


def unshare(flags: int) -> None:
    syscall("unshare", flags)


def setns(fd: int, nstype: int) -> None:
    syscall("setns", fd, nstype)


def waitpid(pid: int, options: int = 0) -> tuple[int, int]:
    """os.waitpid retried on EINTR; __WALL is added so clone children are seen."""
    while True:
        try:
            return os.waitpid(pid, options | WALL)
        except InterruptedError:
            continue


WALL = 0x40000000

# namespace clone flags
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

NS_FLAGS = {
    "uts": CLONE_NEWUTS, "ipc": CLONE_NEWIPC, "net": CLONE_NEWNET, "mnt": CLONE_NEWNS,
    "pid": CLONE_NEWPID, "cgroup": CLONE_NEWCGROUP, "time": CLONE_NEWTIME,
    "user": CLONE_NEWUSER,
}
