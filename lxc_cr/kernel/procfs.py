"""/proc parsers: small pure functions over bytes, and a reader with an injectable root.

The parsers never touch the file system; ``Proc`` reads the files and is the one place
where OSError becomes an lxc-cr error (see ``_proc_boundary``).  Text that names files
(paths, comm) is decoded with ``os.fsdecode`` so ``os.fsencode`` gives the bytes back.
Malformed input makes a parser raise ValueError; ``Proc`` turns that into OperationFailed.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import struct
from typing import NamedTuple

from lxc_cr.errors import OperationFailed, TaskGone

UNLIMITED = 2**64 - 1  # RLIM_INFINITY as the kernel stores it
PF_KTHREAD = 0x00200000  # Stat.flags: a kernel thread (include/linux/sched.h)
PF_EXITING = 0x00000004  # Stat.flags: in do_exit(), not yet a zombie (include/linux/sched.h)


# --- /proc/PID/stat ------------------------------------------------------------------------

class Stat(NamedTuple):
    """The fields of /proc/PID/stat that lxc-cr uses."""

    pid: int
    comm: str
    state: str
    ppid: int
    pgrp: int
    session: int
    tty_nr: int
    flags: int
    num_threads: int
    starttime: int
    vsize: int
    rss: int
    start_code: int
    end_code: int
    start_stack: int
    exit_signal: int
    processor: int
    start_data: int
    end_data: int
    start_brk: int
    arg_start: int
    arg_end: int
    env_start: int
    env_end: int
    exit_code: int


# proc(5) field number (1-based) of each int field of Stat; fields 3.. follow the comm.
_STAT_FIELDS = {
    "ppid": 4, "pgrp": 5, "session": 6, "tty_nr": 7, "flags": 9, "num_threads": 20,
    "starttime": 22, "vsize": 23, "rss": 24, "start_code": 26, "end_code": 27,
    "start_stack": 28, "exit_signal": 38, "processor": 39, "start_data": 45,
    "end_data": 46, "start_brk": 47, "arg_start": 48, "arg_end": 49, "env_start": 50,
    "env_end": 51, "exit_code": 52,
}


def parse_stat(data: bytes) -> Stat:
    """Parse ``/proc/PID/stat`` (fs/proc/array.c do_task_stat)::

        "%d (%s) %c %d %d %d %d %d %u %lu ... %d\\n"   pid (comm) state ppid pgrp ...

    comm is the raw task name (up to 15 bytes, may hold spaces and parens), so the line
    is split at the LAST ')'.  Field numbers are those of proc(5); exit_code is field 52.
    """
    head, sep, tail = data.rpartition(b")")
    pid_txt, sep2, comm = head.partition(b" (")
    if not sep or not sep2:
        raise ValueError(f"stat: no '(comm)' in {data[:80]!r}")
    rest = tail.split()
    if len(rest) < 52 - 2:
        raise ValueError(f"stat: {len(rest) + 2} fields, need 52")
    ints = {name: int(rest[num - 3]) for name, num in _STAT_FIELDS.items()}
    return Stat(pid=int(pid_txt), comm=os.fsdecode(comm), state=rest[0].decode(), **ints)


def is_zombie(stat: Stat) -> bool:
    """True for a task that has exited but is not reaped yet ("Z"), or is dead ("X")."""
    return stat.state in ("Z", "X")


# --- /proc/PID/status ----------------------------------------------------------------------

def parse_status(data: bytes) -> dict[str, str]:
    """Parse ``/proc/PID/status``: one ``"Key:\\tvalue\\n"`` line per field.

    Returns {"Key": "value"} with the value stripped ("Groups:\\t\\n" gives "").
    """
    out: dict[str, str] = {}
    for line in data.decode(errors="surrogateescape").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key] = value.strip()
    return out


class Creds(NamedTuple):
    """Ids, groups, capabilities and namespace ids from /proc/PID/status."""

    uids: tuple[int, int, int, int]   # real, effective, saved, fs
    gids: tuple[int, int, int, int]
    groups: tuple[int, ...]
    cap_inh: int
    cap_prm: int
    cap_eff: int
    cap_bnd: int
    cap_amb: int
    nspid: tuple[int, ...]            # outermost (reader's) namespace first
    nspgid: tuple[int, ...]
    nssid: tuple[int, ...]
    umask: int | None                 # None when the task has no fs_struct (zombie)
    no_new_privs: int
    tgid: int
    threads: int


def _ints(text: str, base: int = 10) -> tuple[int, ...]:
    return tuple(int(v, base) for v in text.split())


def parse_creds(status: dict[str, str]) -> Creds:
    """Build Creds from ``parse_status`` output (fs/proc/array.c task_state, task_cap)::

        "Uid:\\t%d\\t%d\\t%d\\t%d"   "Groups:\\t%d %d "   "CapEff:\\t%016llx"
        "NSpid:\\t%d\\t%d"   "Umask:\\t%#04o"   "NoNewPrivs:\\t%d"   "Threads:\\t%d"
    """
    try:
        uids, gids = _ints(status["Uid"]), _ints(status["Gid"])
        if len(uids) != 4 or len(gids) != 4:
            raise ValueError(f"status: Uid/Gid need 4 values: {uids} {gids}")
        umask = status.get("Umask")
        return Creds(
            uids=uids, gids=gids, groups=_ints(status.get("Groups", "")),
            cap_inh=int(status["CapInh"], 16), cap_prm=int(status["CapPrm"], 16),
            cap_eff=int(status["CapEff"], 16), cap_bnd=int(status["CapBnd"], 16),
            cap_amb=int(status.get("CapAmb", "0"), 16),
            nspid=_ints(status.get("NSpid", "")), nspgid=_ints(status.get("NSpgid", "")),
            nssid=_ints(status.get("NSsid", "")),
            umask=int(umask, 8) if umask else None,
            no_new_privs=int(status.get("NoNewPrivs", "0")),
            tgid=int(status["Tgid"]), threads=int(status["Threads"]))
    except KeyError as e:
        raise ValueError(f"status: no {e.args[0]} line") from None


# --- /proc/PID/maps, smaps -----------------------------------------------------------------

class MapEntry(NamedTuple):
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: str          # "rw-p"
    pgoff: int
    dev_major: int
    dev_minor: int
    inode: int
    path: str           # "" anonymous, "[heap]", "/x (deleted)": exactly as the kernel shows

    @property
    def prot(self) -> int:
        """PROT_READ=1 | PROT_WRITE=2 | PROT_EXEC=4."""
        return ((self.perms[0] == "r") * 1 | (self.perms[1] == "w") * 2
                | (self.perms[2] == "x") * 4)

    @property
    def shared(self) -> bool:
        return self.perms[3] == "s"

    @property
    def deleted(self) -> bool:
        return self.path.endswith(" (deleted)")


def _parse_map_line(line: bytes) -> MapEntry:
    parts = line.split(None, 5)
    if len(parts) < 5:
        raise ValueError(f"maps: short line {line!r}")
    start, _, end = parts[0].partition(b"-")
    major, _, minor = parts[3].partition(b":")
    return MapEntry(int(start, 16), int(end, 16), parts[1].decode(), int(parts[2], 16),
                    int(major, 16), int(minor, 16), int(parts[4]),
                    os.fsdecode(parts[5]) if len(parts) > 5 else "")


def parse_maps(data: bytes) -> list[MapEntry]:
    """Parse ``/proc/PID/maps`` (fs/proc/task_mmu.c show_map_vma)::

        "%08lx-%08lx %c%c%c%c %08llx %02x:%02x %lu " <pad to column 73> "%s\\n"
        start-end perms pgoff major:minor inode path

    The path is everything after the inode's padding; it may contain spaces.  The kernel
    escapes only '\\n' (as "\\012") in it and we keep that text as it is.
    """
    return [_parse_map_line(line) for line in data.split(b"\n") if line]


_VMA_HEAD = re.compile(rb"^([0-9a-f]+)-[0-9a-f]+ ")


def parse_smaps_vmflags(data: bytes) -> dict[int, tuple[str, ...]]:
    """Parse the VmFlags of ``/proc/PID/smaps`` (task_mmu.c show_smap_vma_flags)::

        <maps line>\\n  Size:  4 kB\\n ...  "VmFlags: rd wr mr mw me ac sd \\n"

    Returns {vma start: ("rd", "wr", ...)}.
    """
    out: dict[int, tuple[str, ...]] = {}
    start = None
    for line in data.split(b"\n"):
        m = _VMA_HEAD.match(line)
        if m:
            start = int(m.group(1), 16)
        elif line.startswith(b"VmFlags:") and start is not None:
            out[start] = tuple(t.decode() for t in line[8:].split())
    return out


# --- /proc/PID/limits ----------------------------------------------------------------------

class Limit(NamedTuple):
    """One row of /proc/PID/limits."""

    resource: int       # RLIMIT_*
    name: str           # the row name, "Max open files"
    soft: int           # UNLIMITED for "unlimited"
    hard: int


LIMIT_NAMES = (
    "Max cpu time", "Max file size", "Max data size", "Max stack size",
    "Max core file size", "Max resident set", "Max processes", "Max open files",
    "Max locked memory", "Max address space", "Max file locks", "Max pending signals",
    "Max msgqueue size", "Max nice priority", "Max realtime priority",
    "Max realtime timeout",
)  # index == RLIMIT_* number (RLIMIT_CPU=0 .. RLIMIT_RTTIME=15)
_LIMIT_BY_NAME = {name: i for i, name in enumerate(LIMIT_NAMES)}


def parse_limits(data: bytes) -> list[Limit]:
    """Parse ``/proc/PID/limits`` (fs/proc/base.c proc_pid_limits)::

        "%-25s %-20s %-20s %-10s\\n"   Limit, Soft Limit, Hard Limit, Units (header first)
        "Max open files            1024                 4096                 files     "

    Values are decimal or "unlimited" (-> UNLIMITED).
    """
    out = []
    for line in data.decode().splitlines()[1:]:
        if not line.strip():
            continue
        name, values = line[:25].strip(), line[25:].split()
        if name not in _LIMIT_BY_NAME or len(values) < 2:
            raise ValueError(f"limits: unknown row {line!r}")
        soft, hard = (UNLIMITED if v == "unlimited" else int(v) for v in values[:2])
        out.append(Limit(_LIMIT_BY_NAME[name], name, soft, hard))
    return out


# --- /proc/PID/auxv ------------------------------------------------------------------------

def parse_auxv(data: bytes) -> list[int]:
    """Parse ``/proc/PID/auxv``: the saved ``Elf64_auxv_t {u64 a_type; u64 a_val;}`` array
    as native u64 words, up to and including the terminating AT_NULL pair.
    Empty for kernel threads and zombies."""
    if len(data) % 16:
        raise ValueError(f"auxv: {len(data)} bytes is not a number of u64 pairs")
    words = list(struct.unpack(f"={len(data) // 8}Q", data))
    for i in range(0, len(words), 2):
        if words[i] == 0:  # AT_NULL
            return words[:i + 2]
    return words


# --- /proc/PID/fdinfo/FD -------------------------------------------------------------------

class FdInfo(NamedTuple):
    """/proc/PID/fdinfo/N: the common fields, the kind-specific lines in ``extra``."""

    pos: int
    flags: int          # O_* flags (octal in the file)
    mnt_id: int
    ino: int | None     # None before Linux 5.0
    extra: dict[str, str | list[str]]


# Keys of lines that repeat (one per epoll target, inotify/fanotify mark, lock): their
# values are always lists of the whole lines, decode each with fdinfo_fields().
FDINFO_LIST_KEYS = ("tfd", "inotify", "fanotify", "lock")


def parse_fdinfo(data: bytes) -> FdInfo:
    """Parse ``/proc/PID/fdinfo/FD`` (fs/proc/fd.c seq_show plus the file's show_fdinfo)::

        "pos:\\t%lli\\nflags:\\t0%o\\nmnt_id:\\t%i\\nino:\\t%lu\\n"   then per file type, e.g.
        "eventfd-count: %16llx\\n"   "sigmask:\\t%016llx\\n"   "clockid: %d\\n"
        "tfd: %8d events: %8x data: %16llx  pos:%lli ino:%lx sdev:%x\\n"   (one per target)
        "inotify wd:%x ino:%lx sdev:%x mask:%x ignored_mask:%x ..."     (one per watch)

    Lines whose first word is one of FDINFO_LIST_KEYS go, whole, into a list under that
    key; any other line is split at its first ':' into extra[key] = value (stripped; "settime
    flags: 01" gives key "settime flags"); a repeated key becomes a list.
    """
    base: dict[str, str] = {}
    extra: dict[str, str | list[str]] = {}
    for line in data.decode(errors="surrogateescape").splitlines():
        words = line.split(None, 1)
        if not words:
            continue
        if words[0].rstrip(":") in FDINFO_LIST_KEYS:
            extra.setdefault(words[0].rstrip(":"), []).append(line)  # type: ignore
            continue
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key in ("pos", "flags", "mnt_id", "ino") and key not in base:
            base[key] = value
        elif key in extra:
            old = extra[key]
            extra[key] = (old if isinstance(old, list) else [old]) + [value]
        else:
            extra[key] = value
    try:
        return FdInfo(pos=int(base["pos"]), flags=int(base["flags"], 8),
                      mnt_id=int(base["mnt_id"]),
                      ino=int(base["ino"]) if "ino" in base else None, extra=extra)
    except KeyError as e:
        raise ValueError(f"fdinfo: no {e.args[0]} line") from None


_KV = re.compile(r"([A-Za-z_][\w-]*):\s*(\S+)")


def fdinfo_fields(line: str) -> dict[str, str]:
    """Split one list line of FdInfo.extra into its ``key:value`` tokens:
    "tfd:        5 events:       19 data: 5  pos:0 ino:61af sdev:7" ->
    {"tfd": "5", "events": "19", "data": "5", "pos": "0", "ino": "61af", "sdev": "7"}."""
    return dict(_KV.findall(line))


class InotifyWatch(NamedTuple):
    """One ``inotify`` line of an inotify fd's fdinfo."""

    wd: int
    ino: int
    sdev: int           # the superblock's kernel dev_t: major << 20 | minor
    mask: int
    ignored_mask: int
    handle_type: int    # -1 when the line has no file handle
    handle: bytes

    @property
    def dev(self) -> tuple[int, int]:
        """(major, minor) of ``sdev``, as /proc/PID/mountinfo writes them."""
        return self.sdev >> 20, self.sdev & 0xFFFFF


def parse_inotify_watch(line: str) -> InotifyWatch:
    """One watch line of an inotify fd's fdinfo (fs/notify/fdinfo.c inotify_fdinfo)::

        "inotify wd:%x ino:%lx sdev:%x mask:%x ignored_mask:%x "
        "fhandle-bytes:%x fhandle-type:%x f_handle:%s"     (hex bytes; absent without one)

    Every number is hex, wd too."""
    f = fdinfo_fields(line)
    try:
        handle = bytes.fromhex(f.get("f_handle", ""))
        if "fhandle-bytes" in f and int(f["fhandle-bytes"], 16) != len(handle):
            raise ValueError(f"inotify: f_handle is not {f['fhandle-bytes']} bytes in {line!r}")
        return InotifyWatch(wd=int(f["wd"], 16), ino=int(f["ino"], 16), sdev=int(f["sdev"], 16),
                            mask=int(f["mask"], 16), ignored_mask=int(f.get("ignored_mask", "0"), 16),
                            handle_type=int(f["fhandle-type"], 16) if "fhandle-type" in f else -1,
                            handle=handle)
    except KeyError as e:
        raise ValueError(f"inotify: no {e.args[0]} in {line!r}") from None


# --- /proc/PID/mountinfo -------------------------------------------------------------------

class MountInfo(NamedTuple):
    """One line of /proc/PID/mountinfo."""

    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str
    mount_point: str
    options: str
    optional: tuple[str, ...]   # ("shared:1", "master:2", ...)
    fstype: str
    source: str
    super_options: str


_OCTAL = re.compile(rb"\\([0-7]{3})")


def unescape(text: bytes) -> str:
    """Undo the kernel's seq_escape of ' ', '\\t', '\\n' and '\\\\' as \\ooo octal."""
    return os.fsdecode(_OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), text))


def parse_mountinfo(data: bytes) -> list[MountInfo]:
    """Parse ``/proc/PID/mountinfo`` (fs/proc_namespace.c show_mountinfo)::

        "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue"
        id parent major:minor root mount_point options [optional...] - fstype source super

    root, mount_point, source and super options have octal escapes undone.
    """
    out = []
    for line in data.split(b"\n"):
        if not line:
            continue
        f = line.split(b" ")
        try:
            dash = f.index(b"-", 6)
        except ValueError:
            raise ValueError(f"mountinfo: no ' - ' in {line!r}") from None
        major, _, minor = f[2].partition(b":")
        tail = f[dash + 1:] + [b""] * 3
        out.append(MountInfo(
            int(f[0]), int(f[1]), int(major), int(minor), unescape(f[3]), unescape(f[4]),
            f[5].decode(), tuple(o.decode() for o in f[6:dash]), unescape(tail[0]),
            unescape(tail[1]), unescape(tail[2])))
    return out


# --- symlinks: ns/KIND, fd/N ---------------------------------------------------------------

_BRACKET_LINK = re.compile(r"^([^/:\[]+):\[(\d+)\]$")


def parse_ns_link(target: str) -> tuple[str, int]:
    """``readlink /proc/PID/ns/KIND``: "net:[4026531840]" -> ("net", 4026531840)."""
    m = _BRACKET_LINK.match(target)
    if not m:
        raise ValueError(f"ns link: {target!r}")
    return m.group(1), int(m.group(2))


def parse_fd_link(target: str) -> tuple[str, str | int]:
    """``readlink /proc/PID/fd/N``:
    "pipe:[123]" -> ("pipe", 123); "socket:[5]" -> ("socket", 5); "net:[4026531840]" ->
    ("net", 4026531840); "anon_inode:[eventfd]" -> ("anon_inode", "[eventfd]");
    "anon_inode:inotify" -> ("anon_inode", "inotify"); "/path" -> ("path", "/path")
    (" (deleted)" suffix kept); anything else -> ("unknown", target)."""
    if target.startswith("/"):
        return "path", target
    m = _BRACKET_LINK.match(target)
    if m:
        return m.group(1), int(m.group(2))
    kind, sep, rest = target.partition(":")
    return (kind, rest) if sep and kind else ("unknown", target)


# --- /proc/PID/timers ----------------------------------------------------------------------

def parse_timers(data: bytes) -> list[dict]:
    """Parse ``/proc/PID/timers`` (fs/proc/base.c show_timer), one block per POSIX timer::

        "ID: %d\\nsignal: %d/%px\\nnotify: %s/%s.%d\\nClockID: %d\\n"
        e.g. "notify: signal/pid.1234" ("thread"/"none" for the kind, "tid" with SIGEV_THREAD_ID)

    Each dict: id, signo, sigval (int), notify ("signal"|"none"|"thread"),
    thread_id (bool, SIGEV_THREAD_ID), notify_pid, clock_id.
    """
    out: list[dict] = []
    for line in data.decode().splitlines():
        key, _, value = line.partition(":")
        value = value.strip()
        if key == "ID":
            out.append({"id": int(value)})
        elif not out:
            raise ValueError(f"timers: {line!r} before ID")
        elif key == "signal":
            signo, _, sigval = value.partition("/")
            out[-1].update(signo=int(signo), sigval=int(sigval, 16))
        elif key == "notify":
            kind, _, who = value.partition("/")
            target, _, pid = who.partition(".")
            out[-1].update(notify=kind, thread_id=target == "tid", notify_pid=int(pid))
        elif key == "ClockID":
            out[-1]["clock_id"] = int(value)
    return out


# --- the reader ----------------------------------------------------------------------------

def _proc_boundary(method):
    """Turn OSError into lxc-cr errors, like psutil's wrap_exceptions.

    ESRCH, or ENOENT once /proc/PID is gone -> TaskGone(pid); /proc/PID still there but the
    task is a zombie -> TaskGone(pid, "zombie"); the thread TID gone -> TaskGone(tid);
    EACCES/EPERM -> OperationFailed("pid N: access denied reading PATH"); any other
    OSError (e.g. ENOENT for a closed fd of a live task) or unparsable content ->
    OperationFailed naming the path.
    """
    code = method.__code__
    # where a "tid" argument sits (self, pid, ...), read from the code object: cheaper at
    # import than inspect.signature for every method
    tid_at = code.co_varnames.index("tid") if "tid" in code.co_varnames[:code.co_argcount] \
        else None

    @functools.wraps(method)
    def wrapper(self: Proc, pid: int, *args, **kwargs):
        try:
            return method(self, pid, *args, **kwargs)
        except OSError as e:
            path = e.filename or self._path(pid, "")
            if e.errno in (errno.EACCES, errno.EPERM):
                raise OperationFailed(f"pid {pid}: access denied reading {path}", pid=pid,
                                      errno=e.errno, path=path) from e
            if not os.path.exists(self._path(pid, "")):
                raise TaskGone(pid) from e
            tid = None
            if tid_at is not None:
                full = (self, pid, *args)
                tid = full[tid_at] if tid_at < len(full) else kwargs.get("tid")
            if tid is not None and not os.path.exists(self._path(pid, "", tid)):
                raise TaskGone(tid) from e
            if self.exiting(pid):
                raise TaskGone(pid, "zombie") from e
            if e.errno == errno.ESRCH:
                raise TaskGone(pid if tid is None else tid) from e
            raise OperationFailed(f"pid {pid}: reading {path}: {e.strerror}", pid=pid,
                                  errno=e.errno, path=path) from e
        except ValueError as e:
            raise OperationFailed(f"pid {pid}: cannot parse {method.__name__}: {e}",
                                  pid=pid) from e
    return wrapper


class Proc:
    """Reads /proc (or a copy of it: ``root``).  Every method goes through _proc_boundary."""

    def __init__(self, root: str = "/proc"):
        self.root = root

    def _path(self, pid: int, name: str, tid: int | None = None) -> str:
        base = f"{self.root}/{pid}" if tid is None else f"{self.root}/{pid}/task/{tid}"
        return f"{base}/{name}" if name else base

    def exiting(self, pid: int) -> bool:
        """Gone, exited (Z, X) or exiting: do_exit() drops the task's namespaces, files and
        mm (exit_task_namespaces, exit_files, exit_mm), and on cgroup v1 puts it back in each
        hierarchy's root (cgroup_exit), before exit_notify() makes it a zombie, so meanwhile
        /proc/PID/ns/* and fd/* give ENOENT and /proc/PID/cgroup says "/" while PF_EXITING
        is set."""
        try:
            st = parse_stat(self._read(pid, "stat"))
        except OSError:
            return True
        except ValueError:
            return False
        return is_zombie(st) or bool(st.flags & PF_EXITING)

    def _read(self, pid: int, name: str, tid: int | None = None) -> bytes:
        with open(self._path(pid, name, tid), "rb", buffering=0) as f:
            return f.read()

    @_proc_boundary
    def read(self, pid: int, name: str, tid: int | None = None) -> bytes:
        """/proc/PID/NAME, or /proc/PID/task/TID/NAME."""
        return self._read(pid, name, tid)

    @_proc_boundary
    def readlink(self, pid: int, name: str) -> str:
        return os.readlink(self._path(pid, name))

    @_proc_boundary
    def stat(self, pid: int, tid: int | None = None) -> Stat:
        return parse_stat(self._read(pid, "stat", tid))

    @_proc_boundary
    def status(self, pid: int, tid: int | None = None) -> dict[str, str]:
        return parse_status(self._read(pid, "status", tid))

    @_proc_boundary
    def creds(self, pid: int, tid: int | None = None) -> Creds:
        return parse_creds(parse_status(self._read(pid, "status", tid)))

    def _need_mm(self, pid: int, data: bytes) -> bytes:
        """Empty maps/auxv means no mm: a kernel thread (fine) or a zombie (TaskGone)."""
        if not data and self.exiting(pid):
            raise TaskGone(pid, "zombie")
        return data

    @_proc_boundary
    def maps(self, pid: int) -> list[MapEntry]:
        return parse_maps(self._need_mm(pid, self._read(pid, "maps")))

    @_proc_boundary
    def smaps_vmflags(self, pid: int) -> dict[int, tuple[str, ...]]:
        return parse_smaps_vmflags(self._need_mm(pid, self._read(pid, "smaps")))

    @_proc_boundary
    def limits(self, pid: int) -> list[Limit]:
        return parse_limits(self._read(pid, "limits"))

    @_proc_boundary
    def auxv(self, pid: int) -> list[int]:
        """[] for a kernel thread (the kernel answers ESRCH: no mm)."""
        try:
            return parse_auxv(self._need_mm(pid, self._read(pid, "auxv")))
        except ProcessLookupError:
            if parse_stat(self._read(pid, "stat")).flags & PF_KTHREAD:
                return []
            raise

    @_proc_boundary
    def timers(self, pid: int) -> list[dict]:
        return parse_timers(self._read(pid, "timers"))

    @_proc_boundary
    def tids(self, pid: int) -> list[int]:
        """Thread ids, sorted, the leader (tid == pid) first."""
        tids = sorted(int(t) for t in os.listdir(self._path(pid, "task")) if t.isdigit())
        return [pid] + [t for t in tids if t != pid] if pid in tids else tids

    @_proc_boundary
    def children(self, pid: int) -> list[int]:
        """Union over all threads of /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN).
        A thread that exits meanwhile is skipped; its children went to another thread."""
        kids: set[int] = set()
        for tid in self.tids(pid):
            try:
                kids.update(_ints(self._read(pid, "children", tid).decode()))
            except OSError:
                if tid == pid or os.path.exists(self._path(pid, "", tid)):
                    raise
        return sorted(kids)

    @_proc_boundary
    def fds(self, pid: int) -> list[int]:
        return sorted(int(fd) for fd in os.listdir(self._path(pid, "fd")) if fd.isdigit())

    @_proc_boundary
    def fdinfo(self, pid: int, fd: int) -> FdInfo:
        return parse_fdinfo(self._read(pid, f"fdinfo/{fd}"))

    @_proc_boundary
    def mountinfo(self, pid: int) -> list[MountInfo]:
        return parse_mountinfo(self._read(pid, "mountinfo"))

    @_proc_boundary
    def ns(self, pid: int, kind: str) -> int:
        """Inode number of /proc/PID/ns/KIND."""
        _, ino = parse_ns_link(os.readlink(self._path(pid, f"ns/{kind}")))
        return ino

    def pids(self) -> list[int]:
        """All numeric entries of the root, sorted (no pid: nothing to wrap)."""
        return sorted(int(p) for p in os.listdir(self.root) if p.isdigit())

    @_proc_boundary
    def personality(self, pid: int) -> int:
        return int(self._read(pid, "personality"), 16)
