"""Helpers for the ``lxc-cr tree dump|restore`` integration tests (tests/integration/test_tree_*).

Self-contained on purpose (no dependency on tests/conftest.py):

* ``build(name, *flags)``  compiles tests/workloads/NAME.c with gcc, cached per session;
* ``Harness`` (fixture ``tree`` in each test module via ``harness_fixture``) launches workloads
  in their own pid namespace, runs the CLI, tracks every process a test started or restored,
  and kills and reaps all of them in its finalizer, even when the test failed;
* ``snapshot(root)`` is the namespace view of a tree read from /proc (pid, ppid, pgid, sid,
  threads, fds, state) that a test compares before the dump and after the restore;
* ``wait_for(pred)`` is the one bounded poll loop (liveness only: it never asserts a duration).

Workloads report through state files (``key=value`` lines rewritten in place, see read_state),
so nothing here reads a pipe of the workload: the engine refuses pipes and ttys on stdio.

Reaping: on these machines the host's pid 1 (``process_api``) does not reap orphans, so a killed
restored tree would stay a zombie forever.  The harness therefore makes pytest a child
subreaper (PR_SET_CHILD_SUBREAPER) for the duration of one test: the restored root (orphaned
when ``lxc-cr tree restore`` exits) becomes our child and is reaped with waitpid.  The previous
setting is put back at teardown.
"""

from __future__ import annotations

import atexit
import ctypes
import dataclasses
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKLOADS = REPO / "tests" / "workloads"
_venv_cli = Path(sys.executable).with_name("lxc-cr")
LXC_CR = str(_venv_cli) if _venv_cli.exists() else (shutil.which("lxc-cr") or "lxc-cr")
PYTHON3 = "/usr/bin/python3"

ERROR_PREFIX = "lxc-cr: error:"
UNSUPPORTED_RE = re.compile(r"pid (\d+) \((\w+)\) fd (\d+): (.*): not supported")

PR_SET_CHILD_SUBREAPER, PR_GET_CHILD_SUBREAPER = 36, 37
WALL = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


# --------------------------------------------------------------------------------------------
# building workloads

_BIN_DIR: Path | None = None
_BUILT: dict[tuple, Path] = {}


def _bin_dir() -> Path:
    """A per-session directory for binaries, world-traversable (workloads drop privileges)."""
    global _BIN_DIR
    if _BIN_DIR is None:
        _BIN_DIR = Path(tempfile.mkdtemp(prefix="lxccr-tree-bin-"))
        os.chmod(_BIN_DIR, 0o755)
        atexit.register(shutil.rmtree, _BIN_DIR, True)
    return _BIN_DIR


def build(name: str, *flags: str) -> Path:
    """Compile tests/workloads/NAME.c (gcc -O1 -g -Wall -pthread FLAGS), once per session."""
    key = (name, flags)
    if key in _BUILT:
        return _BUILT[key]
    src = WORKLOADS / f"{name}.c"
    suffix = "-" + hashlib.sha1(" ".join(flags).encode()).hexdigest()[:8] if flags else ""
    out = _bin_dir() / f"{name}{suffix}"
    cmd = ["gcc", "-O1", "-g", "-Wall", "-Werror", "-pthread", "-o", str(out), str(src), *flags]
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        pytest.fail(f"cannot compile {src.name}: {' '.join(cmd)}\n{r.stderr}", pytrace=False)
    os.chmod(out, 0o755)
    _BUILT[key] = out
    return out


# --------------------------------------------------------------------------------------------
# polling

class WaitTimeout(AssertionError):
    pass


def wait_for(pred, what: str, timeout: float = 30.0, interval: float = 0.005):
    """Poll ``pred()`` until it returns a true value (returned).  Fails naming ``what``.

    The timeout is a safety net for a hung workload, never a measurement: tests assert on
    values, not on how long anything took.
    """
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except (OSError, ValueError, KeyError) as e:   # a file not yet there, a process gone
            last_exc = e
        if time.monotonic() > deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise WaitTimeout(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(interval)


# --------------------------------------------------------------------------------------------
# state files written by the workloads

def read_state(path) -> dict[str, str]:
    """``key=value`` lines of a state file; {} for a file with no record yet (or reset).

    Workloads rewrite their state file in place (put_state in tests/workloads/*.c): the
    record starts with ``seq=K`` and ends with ``end=K``; a read that sees them differ caught
    a write half-done and is repeated.
    """
    for _ in range(1000):
        out = {}
        for line in Path(path).read_text(errors="replace").splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                out[k] = v
        if out.get("seq") == out.get("end"):      # both absent: a file written once
            return out
        time.sleep(0.001)
    raise ValueError(f"{path}: seq and end never agree (torn writes only)")


def reset_state(path) -> None:
    """Blank a state file in place (same inode: a restored process may reopen it by path)."""
    fd = os.open(str(path), os.O_WRONLY)
    try:
        os.pwrite(fd, b"\n" * 4096, 0)
    finally:
        os.close(fd)


def state_int(path, key: str) -> int:
    return int(read_state(path)[key], 0)


def wait_state(path, pred, what: str, timeout: float = 30.0) -> dict[str, str]:
    """Poll a state file until ``pred(state)`` holds; returns that state."""
    def probe():
        st = read_state(path)
        return st if pred(st) else None
    return wait_for(probe, f"{what} (state file {path})", timeout=timeout)


def wait_changed(path, old: dict, key: str = "counter", timeout: float = 30.0) -> dict:
    """Wait for the first rewrite of a state file whose ``key`` differs from ``old[key]``."""
    return wait_state(path, lambda st: key in st and st[key] != old.get(key),
                      f"a new write of {key} (was {old.get(key)})", timeout=timeout)


# --------------------------------------------------------------------------------------------
# /proc views

def proc_exists(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def status(pid: int, tid: int | None = None) -> dict[str, str]:
    path = f"/proc/{pid}/task/{tid}/status" if tid else f"/proc/{pid}/status"
    out = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def gone(pid: int) -> bool:
    """True once /proc/PID no longer exists; reaps it first if it is our zombie child (a
    restored root is: the harness makes pytest a child subreaper)."""
    try:
        st = status(pid)
    except FileNotFoundError:
        return True
    if st["State"].startswith("Z") and int(st["PPid"]) == os.getpid():
        try:
            os.waitpid(pid, os.WNOHANG | WALL)
        except ChildProcessError:
            pass
    return not proc_exists(pid)


def exited(pid: int) -> bool:
    """Gone, or a zombie (exited, not collected yet)."""
    try:
        return status(pid)["State"][0] in "ZX"
    except FileNotFoundError:
        return True


def netns_process(cleanup_pids, tmp_path, script: str) -> int:
    """A sleeping process in a net namespace of its own (``unshare --net``), set up by the
    shell ``script`` first; its pid (``cleanup_pids`` kills it after the test)."""
    ready = tmp_path / f"ready-{time.monotonic_ns()}"
    p = subprocess.Popen(["unshare", "--net", "sh", "-ec", script + f"touch {ready}\n"
                          "exec sleep 300"], stdin=subprocess.DEVNULL)
    cleanup_pids.add(p)
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert p.poll() is None, "the namespace's setup failed"
        assert time.monotonic() < deadline, "the namespace's setup did not finish"
        time.sleep(0.02)
    return p.pid


def tids(pid: int) -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        return []


def children(pid: int) -> list[int]:
    kids = []
    for tid in tids(pid):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(x) for x in f.read().split()]
        except FileNotFoundError:
            pass
    return kids


def tree_pids(root: int) -> list[int]:
    """Host pids of root and all its descendants, parents first."""
    out, todo = [], [root]
    while todo:
        p = todo.pop(0)
        if p in out:
            continue
        out.append(p)
        todo += children(p)
    return out


def proc_report(pids) -> str:
    """State, TracerPid, wchan, current syscall and signals of every thread of ``pids``
    (what a test that timed out prints)."""
    lines = []
    for h in dict.fromkeys(pids):
        for t in tids(h):
            try:
                st = status(h, t)
                wchan = Path(f"/proc/{h}/task/{t}/wchan").read_text()
                sc = Path(f"/proc/{h}/task/{t}/syscall").read_text().split()[:1]
            except OSError:
                continue
            lines.append(f"  pid {h} tid {t} ({st.get('Name')}): {st.get('State')} "
                         f"TracerPid={st.get('TracerPid')} wchan={wchan} syscall={sc} "
                         f"SigBlk={st.get('SigBlk')} SigPnd={st.get('SigPnd')} "
                         f"ShdPnd={st.get('ShdPnd')}")
    return "/proc at the timeout:\n" + "\n".join(lines)


def vfork_child(pid: int) -> int:
    """The child of ``pid`` that still runs in its memory, a vfork() child not exec'd yet
    (kcmp KCMP_VM; 0: none, or it went meanwhile)."""
    return next((c for c in children(pid)
                 if _libc.syscall(SYS_kcmp, pid, c, KCMP_VM, 0, 0) == 0), 0)


def exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


KCMP_FILE, KCMP_VM, KCMP_FILES = 0, 1, 2
SYS_kcmp = 312


def kcmp(pid1: int, pid2: int, kind: int, idx1: int = 0, idx2: int = 0) -> bool:
    """kcmp(2) says the two processes share the object: KCMP_FILE, fds idx1 and idx2 are
    one open file description; KCMP_FILES, one fd table."""
    r = _libc.syscall(SYS_kcmp, pid1, pid2, kind, idx1, idx2)
    assert r >= 0, f"kcmp({pid1}, {pid2}, {kind}, {idx1}, {idx2}): errno {ctypes.get_errno()}"
    return r == 0


def fd_targets(pid: int) -> dict[int, str]:
    out = {}
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for n in names:
        try:
            out[int(n)] = os.readlink(f"/proc/{pid}/fd/{n}")
        except OSError:
            pass
    return out


@dataclasses.dataclass(frozen=True)
class TaskView:
    """One process as seen inside its pid namespace (the level of the tree's root)."""
    pid: int
    ppid: int
    pgid: int
    sid: int
    comm: str
    state: str           # one letter: R S D Z ...
    tids: tuple          # namespace tids of all threads, sorted
    fds: tuple           # ((fd, target), ...) sorted; empty for a zombie

    def ident(self):
        """What must survive a checkpoint unchanged (state letter and fds aside)."""
        return (self.pid, self.ppid, self.pgid, self.sid, self.comm, self.tids)


def _last(field: str, level: int) -> int:
    vals = [int(x) for x in field.split()]
    return vals[level] if len(vals) > level else 0


def snapshot(root: int) -> dict[int, TaskView]:
    """{ns pid: TaskView} of the tree rooted at host pid ``root``."""
    hosts = tree_pids(root)
    sts = {h: status(h) for h in hosts}
    level = len(sts[root]["NSpid"].split()) - 1
    nspid = {h: _last(sts[h]["NSpid"], level) for h in hosts}
    out = {}
    for h in hosts:
        st = sts[h]
        ppid_host = int(st["PPid"])
        ns_tids = []
        for t in tids(h):
            try:
                ns_tids.append(_last(status(h, t)["NSpid"], level))
            except FileNotFoundError:
                pass
        v = TaskView(pid=nspid[h], ppid=nspid.get(ppid_host, 0),
                     pgid=_last(st["NSpgid"], level), sid=_last(st["NSsid"], level),
                     comm=st["Name"], state=st["State"].split()[0], tids=tuple(sorted(ns_tids)),
                     fds=tuple(sorted(fd_targets(h).items())))
        out[v.pid] = v
    return out


def host_pid_of(root: int, nspid: int) -> int:
    """Host pid of the process with namespace pid ``nspid`` in root's tree."""
    for h in tree_pids(root):
        st = status(h)
        level = len(status(root)["NSpid"].split()) - 1
        if _last(st["NSpid"], level) == nspid:
            return h
    raise KeyError(f"no ns pid {nspid} under host pid {root}")


def idents(snap: dict[int, TaskView]) -> dict:
    """{ns pid: (pid, ppid, pgid, sid, comm, ns tids)}"""
    return {p: v.ident() for p, v in snap.items()}


def ids(snap: dict[int, TaskView]) -> dict:
    """{ns pid: (pid, ppid, pgid, sid)}"""
    return {p: v.ident()[:4] for p, v in snap.items()}


def assert_running_untraced(root: int) -> None:
    """Every thread of the tree: TracerPid 0 and not stopped (zombies allowed)."""
    for h in tree_pids(root):
        for t in tids(h):
            try:
                st = status(h, t)
            except FileNotFoundError:
                continue
            state = st["State"].split()[0]
            assert st["TracerPid"] == "0", f"pid {h} tid {t} still traced: {st['TracerPid']}"
            assert state not in ("t", "T"), f"pid {h} tid {t} is stopped: {st['State']}"


def all_pids_with_exe(path) -> set[int]:
    path = os.path.realpath(str(path))
    out = set()
    for d in os.listdir("/proc"):
        if d.isdigit() and exe(int(d)) == path:
            out.add(int(d))
    return out


def descendants_of_me() -> set[int]:
    me = os.getpid()
    return set(tree_pids(me)) - {me}


def read_mem(pid: int, addr: int, size: int) -> bytes:
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        chunks, off = [], 0
        while off < size:
            b = os.pread(fd, min(1 << 22, size - off), addr + off)
            if not b:
                raise OSError(f"short read of /proc/{pid}/mem at {addr + off:#x}")
            chunks.append(b)
            off += len(b)
        return b"".join(chunks)
    finally:
        os.close(fd)


def sha256_file(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# the CLI

@dataclasses.dataclass
class CliResult:
    argv: list
    rc: int
    out: str
    err: str
    env: dict = dataclasses.field(default_factory=dict)

    def describe(self) -> str:
        env = "".join(f"{k}={v} " for k, v in self.env.items() if k.startswith("LXC_CR"))
        return (f"`{env}{' '.join(map(str, self.argv))}` exited {self.rc}\n"
                f"stdout: {self.out.strip()!r}\nstderr: {self.err.strip()[-2000:]!r}")

    def error_lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.startswith(ERROR_PREFIX)]


def assert_one_error_line(res: CliResult) -> str:
    """stderr is exactly one line, and it is the contract's ``lxc-cr: error:`` line."""
    lines = [ln for ln in res.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), (
        "expected exactly one 'lxc-cr: error:' line on stderr\n" + res.describe())
    assert "Traceback" not in res.err, res.describe()
    return lines[0]


# --------------------------------------------------------------------------------------------
# the harness

class Workload:
    """A workload started by ``unshare --pid --fork --mount-proc``; ``root`` is its pid 1."""

    def __init__(self, popen: subprocess.Popen, root: int, binary: str, cwd: Path):
        self.popen = popen
        self.root = root
        self.binary = binary
        self.cwd = cwd


class Harness:
    def __init__(self, base: Path):
        self.base = base
        self._n = 0
        self.workloads: list[Workload] = []
        self.restored: list[int] = []
        self._prev_subreaper = ctypes.c_int(0)
        _libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(self._prev_subreaper), 0, 0, 0)
        if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")

    # -- directories

    def dir(self, label: str, mode: int = 0o755) -> Path:
        self._n += 1
        d = self.base / f"{self._n:02d}-{label}"
        d.mkdir()
        os.chmod(d, mode)
        return d

    # -- workloads

    def launch(self, argv: list, ready=None, cwd: Path | None = None,
               what: str = "workload ready", timeout: float = 60.0, unshare=(),
               preexec_fn=None) -> Workload:
        """Start argv as pid 1 of a new pid (and mount) namespace with stdio on /dev/null.

        ``unshare``: more unshare(1) options (``--time``, ...); ``preexec_fn``: run in the
        child before unshare execs (e.g. to enter a cgroup).  Waits until the root has
        exec'd argv[0] and ``ready()`` (if given) is true.
        """
        cwd = cwd or self.base
        p = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", *unshare,
                              *map(str, argv)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True,
                             cwd=str(cwd), preexec_fn=preexec_fn)
        wl = Workload(p, 0, os.path.realpath(str(argv[0])), cwd)
        self.workloads.append(wl)

        def root():
            if p.poll() is not None:
                raise AssertionError(f"unshare exited with {p.returncode} before the workload "
                                     f"started: {argv}")
            kids = children(p.pid)
            if len(kids) == 1 and exe(kids[0]) == wl.binary:
                return kids[0]
            return None
        wl.root = wait_for(root, f"the root of {argv} to exec", timeout=timeout)
        if ready is not None:
            wait_for(ready, what, timeout=timeout)
        return wl

    def track(self, host_pid: int) -> int:
        self.restored.append(host_pid)
        return host_pid

    # -- the CLI

    def cli(self, *args, env: dict | None = None, timeout: float = 30.0,
            preexec_fn=None) -> CliResult:
        """Run lxc-cr ARGS with stdout/stderr in files (never pipes a restored tree could keep).

        A run that hangs past ``timeout`` fails the test with what /proc shows of lxc-cr and of
        every process this test started, then lxc-cr's Python traceback (faulthandler, SIGABRT).
        """
        self._n += 1
        o = self.base / f"cli-{self._n:03d}.out"
        e = self.base / f"cli-{self._n:03d}.err"
        argv = [LXC_CR, *map(str, args)]
        full_env = dict(os.environ)
        for k in ("LXC_CR_FAULT", "LXC_CR_FAULT_TRACE"):
            full_env.pop(k, None)
        full_env["PYTHONFAULTHANDLER"] = "1"
        full_env.update(env or {})
        with open(o, "w") as fo, open(e, "w") as fe:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fo, stderr=fe,
                                 env=full_env, close_fds=True, preexec_fn=preexec_fn)
            try:
                rc = p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                rc = None
                diag = self.diagnose(p.pid)
                p.send_signal(signal.SIGABRT)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        res = CliResult(argv, rc, o.read_text(), e.read_text(), dict(env or {}))
        if rc is None:
            pytest.fail(f"timed out after {timeout}s: {res.describe()}\n{diag}", pytrace=False)
        return res

    def diagnose(self, cli_pid: int) -> str:
        """State, TracerPid, wchan and current syscall of lxc-cr and every thread we started."""
        pids = [cli_pid] + [h for wl in self.workloads for h in tree_pids(wl.popen.pid)]
        pids += [h for r in self.restored for h in tree_pids(r)]
        return proc_report(pids)

    def dump(self, pid: int, image, *extra, env=None, timeout: float = 30.0) -> CliResult:
        res = self.cli("tree", "dump", pid, image, *extra, env=env, timeout=timeout)
        assert res.rc == 0, "dump failed: " + res.describe()
        assert os.path.isfile(image), "dump exited 0 but wrote no image: " + res.describe()
        return res

    def restore(self, image, *extra, env=None, timeout: float = 30.0, preexec_fn=None) -> int:
        """Restore; returns (and tracks) the host pid of the restored root."""
        res = self.cli("tree", "restore", image, *extra, env=env, timeout=timeout,
                       preexec_fn=preexec_fn)
        m = re.fullmatch(r"\s*(\d+)\s*", res.out)
        if m:
            self.track(int(m.group(1)))
        assert res.rc == 0, "restore failed: " + res.describe()
        assert m, "restore did not print the restored root's host pid: " + res.describe()
        pid = int(m.group(1))
        assert proc_exists(pid), f"restore printed pid {pid}, which does not exist"
        return pid

    # -- teardown

    def kill_and_reap(self, pid: int, what: str = "", timeout: float = 30.0) -> None:
        """SIGKILL pid (pid 1 of its namespace: the namespace dies with it) and wait until
        /proc/PID is gone, reaping it if it is our child."""
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while proc_exists(pid):
            try:
                if int(status(pid)["PPid"]) == os.getpid():
                    os.waitpid(pid, WALL)
                    continue
            except (ChildProcessError, FileNotFoundError, KeyError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{what or 'pid'} {pid} still exists {timeout}s after "
                                     f"SIGKILL: {status(pid).get('State')}")
            time.sleep(0.005)

    def kill_workload(self, wl: Workload) -> None:
        if wl.popen.poll() is None:
            for k in children(wl.popen.pid):
                try:
                    os.kill(k, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                wl.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                wl.popen.kill()
                wl.popen.wait(timeout=30)

    def close(self) -> list[str]:
        errors = []
        for pid in self.restored:
            try:
                self.kill_and_reap(pid, "restored root")
            except Exception as e:
                errors.append(str(e))
        for wl in self.workloads:
            try:
                self.kill_workload(wl)
            except Exception as e:
                errors.append(f"workload {wl.binary}: {e}")
        # anything else a failed test left as our child (e.g. a half-restored tree orphaned
        # to us by the subreaper setting): kill and reap it too
        for pid in sorted(descendants_of_me()):
            try:
                if int(status(pid)["PPid"]) == os.getpid():
                    errors.append(f"left over: pid {pid} ({status(pid).get('Name')})")
                    self.kill_and_reap(pid, "leftover")
            except (FileNotFoundError, KeyError):
                pass
            except Exception as e:
                errors.append(str(e))
        _libc.prctl(PR_SET_CHILD_SUBREAPER, self._prev_subreaper.value, 0, 0, 0)
        shutil.rmtree(self.base, ignore_errors=True)
        return errors


def harness_fixture():
    """Build the ``tree`` fixture: a Harness whose finalizer kills and reaps everything."""
    @pytest.fixture
    def tree():
        if os.geteuid() != 0:
            pytest.skip("tree dump/restore tests need root")
        base = Path(tempfile.mkdtemp(prefix="lxccr-tree-"))
        os.chmod(base, 0o755)
        h = Harness(base)
        try:
            yield h
        finally:
            errors = h.close()
        if errors:
            pytest.fail("teardown: " + "; ".join(errors), pytrace=False)
    return tree


# --------------------------------------------------------------------------------------------
# common steps

def dump_kill(h: Harness, root: int, image, *extra, env=None, timeout: float = 30.0) -> CliResult:
    """``tree dump ROOT IMAGE`` (default mode) and wait until every process of the tree died."""
    hosts = tree_pids(root)
    res = h.dump(root, image, *extra, env=env, timeout=timeout)
    for p in hosts:
        wait_for(lambda p=p: gone(p),
                 f"pid {p} of the dumped tree to die (default dump kills the tree)")
    return res


def launch_threads(h: Harness, label: str, n: int):
    """wl_threads with ``n`` worker threads, in a new directory ``label`` of the harness,
    once every thread has published its tid and counted three times: (the workload, its
    directory, its state file)."""
    binary = build("wl_threads")
    d = h.dir(label)
    st = d / "state"

    def ready():
        s = read_state(st)
        return all(int(s.get(f"tid{i}", 0)) > 0 and int(s.get(f"count{i}", 0)) >= 3
                   for i in range(n))
    return h.launch([binary, st, str(n)], ready=ready), d, st


def assert_continued(before: dict, after: dict, key: str = "counter", what: str = "") -> None:
    """``after`` was written by the same run of the program as ``before`` (same boot token,
    drawn once at start) and its counter went on from there (not restarted)."""
    assert after["boot"] == before["boot"], (
        f"{what}: boot token changed ({before['boot']} -> {after['boot']}): the program "
        f"started again instead of continuing")
    assert int(after[key]) > int(before[key]), (
        f"{what}: {key} did not continue: {before[key]} before the dump, {after[key]} after")


class Watcher(threading.Thread):
    """Samples State and TracerPid of every thread of the tree while a command runs."""

    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root = root
        self.stop = threading.Event()
        self.seen: list[str] = []
        self.samples = 0

    def run(self):
        while not self.stop.is_set():
            for h in tree_pids(self.root):
                for t in tids(h):
                    try:
                        st = status(h, t)
                    except FileNotFoundError:
                        continue
                    if st["TracerPid"] != "0" or st["State"][0] in "tT":
                        self.seen.append(f"pid {h} tid {t}: {st['State']} "
                                         f"TracerPid {st['TracerPid']}")
            self.samples += 1


def refused_dump(h, root: int, image, *extra, pattern=UNSUPPORTED_RE):
    """``tree dump ROOT IMAGE`` that must be refused before anything is stopped: runs it under
    a Watcher and checks exit 1, one error line in the contract's format (returned with its
    match of ``pattern``), no image, and that no thread of the tree was ever stopped or
    traced."""
    w = Watcher(root)
    w.start()
    try:
        res = h.cli("tree", "dump", root, image, *extra)
    finally:
        w.stop.set()
        w.join()
    assert res.rc == 1, res.describe()
    line = assert_one_error_line(res)
    m = pattern.search(line)
    assert m, line
    assert not os.path.exists(image), "a refused dump left an image"
    assert w.samples > 0 and w.seen == [], w.seen[:5]
    return line, m


