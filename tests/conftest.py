"""Shared pytest set-up: markers, prerequisites, and real-environment fixtures.

Tiers (markers declared in pyproject.toml):
  unit         pure tests; applied automatically to tests under tests/unit/
  integration  real processes, needs root; applied to tests under tests/integration/ and to
               every test that uses env_ready, lxc_container, libvirt_conn or libvirt_domain
  lxc, libvirt applied to tests that use the LXC / libvirt fixtures
  soak         deselected unless ``--run-soak``

Prerequisites: an integration test is skipped (with the reason) when not root or when a tool
is missing -- except under CI (env CI=true), where a missing prerequisite fails the test.

Every object a test creates is named ``lxccr-test-<pid of this pytest>-<label>-<hex>``;
integration/env-down.sh and integration/check-clean.sh rely on that form.  An autouse check
fails any integration test that leaves such a container, domain or process behind.

Fixtures (see each docstring):
  env_ready                  session: runs integration/env-up.sh once -> Env
  lxc_container              factory: (label="ct", *, start=False, lxcpath=None) -> LxcTestContainer
  libvirt_conn               libvirt.virConnect on lxc:///system
  libvirt_domain             factory: (label="dom", *, persistent=False, start=True, init="/bin/sh",
                             initargs=(...loop...), memory_mib=64, xml=None) -> libvirt.virDomain
  cc                         (source, *flags, name="prog") -> Path of the compiled binary
  cleanup_pids               ProcessReaper: .add(pid_or_Popen), .add_group(pgid)
  test_name                  (label) -> a fresh unique lxccr-test- name
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INTEGRATION = REPO / "integration"
PREFIX = "lxccr-test-"
RUN_TAG = f"{PREFIX}{os.getpid()}-"      # every object of this pytest run starts with it
LIBVIRT_URI = "lxc:///system"
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")

_ENV_FIXTURES = {"env_ready", "lxc_container", "libvirt_conn", "libvirt_domain"}
RESTARTS_LIBVIRTD = {"test_libvirt_hook.py", "test_host_reboot.py"}


# --------------------------------------------------------------------------------------------
# options, markers, selection

def pytest_addoption(parser):
    parser.addoption("--run-soak", action="store_true", default=False,
                     help="also run tests marked soak (long runs, not part of make test)")


def pytest_ignore_collect(collection_path, config):
    """Never collect inside test data: stored /proc trees hold symlinks such as root -> /."""
    if collection_path.is_symlink():
        return True
    if collection_path.name == "data" and collection_path.parent.is_relative_to(REPO / "tests"):
        return True
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = Path(str(item.fspath)).resolve()
        parts = path.relative_to(REPO).parts if path.is_relative_to(REPO) else ()
        names = set(getattr(item, "fixturenames", ()))
        if parts[:2] == ("tests", "unit"):
            item.add_marker(pytest.mark.unit)
        if parts[:2] == ("tests", "integration") or names & _ENV_FIXTURES:
            item.add_marker(pytest.mark.integration)
        if "lxc_container" in names:
            item.add_marker(pytest.mark.lxc)
        if names & {"libvirt_conn", "libvirt_domain"}:
            item.add_marker(pytest.mark.libvirt)
    # Tests that restart libvirtd (to load hooks, or to simulate a reboot) run last: a
    # domain started around a restart can be left with <init pid='0'/> in libvirt's status
    # file for its whole run (libvirtd never got the controller's init event), which lxc-cr
    # refuses rather than guess ("no live init pid").  Stable sort: the order is otherwise kept.
    items.sort(key=lambda it: Path(str(it.fspath)).name in RESTARTS_LIBVIRTD)

    if config.getoption("--run-soak"):
        return
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker("soak") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def require(ok: bool, reason: str) -> None:
    """Skip the test for a missing prerequisite; under CI, fail instead."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"prerequisite missing under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def _is_root() -> bool:
    return os.geteuid() == 0


# --------------------------------------------------------------------------------------------
# leak check around every integration test

def _owned_objects() -> set[str]:
    """Containers, domains and processes of this run that exist right now."""
    found: set[str] = set()
    lxcpath = Path("/var/lib/lxc")
    if lxcpath.is_dir():
        found |= {f"container {p.name}" for p in lxcpath.iterdir()
                  if p.name.startswith(RUN_TAG) and (p / "config").exists()}
    for cfg in (Path("/run/libvirt/lxc"), Path("/etc/libvirt/lxc")):
        if cfg.is_dir():
            found |= {f"domain {p.stem}" for p in cfg.glob(f"{RUN_TAG}*.xml")}
    me = os.getpid()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if RUN_TAG.encode() in cmd:
            text = cmd.replace(b"\0", b" ").decode(errors="replace")[:80]
            found.add(f"process {d.name} ({text})")
    return found


@pytest.fixture(autouse=True)
def _integration_guard(request):
    """Integration tests need root (skip, or fail under CI); fail one that leaves
    lxccr-test- objects of this run behind.

    Autouse function fixtures are set up first and torn down last, so the leak check runs
    after the factories' own teardown.
    """
    if request.node.get_closest_marker("integration") is None:
        yield
        return
    require(_is_root(), "integration tests need root")
    before = _owned_objects()
    yield
    left: set[str] = set()
    for _ in range(20):            # monitors and controllers take a moment to exit
        left = _owned_objects() - before
        if not left:
            return
        time.sleep(0.25)
    pytest.fail("test left behind: " + "; ".join(sorted(left)), pytrace=False)


# --------------------------------------------------------------------------------------------
# environment

@dataclasses.dataclass(frozen=True)
class Env:
    repo: Path
    prefix: str          # lxccr-test-
    run_tag: str         # lxccr-test-<pid>-
    uri: str             # lxc:///system
    bridge: str          # lxcbr0


def _unique_name(label: str) -> str:
    label = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")[:16] or "x"
    return f"{RUN_TAG}{label}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def test_name():
    """``test_name(label)`` -> a fresh ``lxccr-test-<pid>-<label>-<hex>`` name."""
    return _unique_name


@pytest.fixture(scope="session")
def env_ready() -> Env:
    """Run integration/env-up.sh once per session (packages, lxcbr0, libvirtd answering)."""
    require(_is_root(), "integration tests need root")
    try:
        r = subprocess.run([str(INTEGRATION / "env-up.sh")], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        pytest.fail("integration/env-up.sh timed out", pytrace=False)
    require(r.returncode == 0,
            f"integration/env-up.sh failed ({r.returncode}): {r.stderr.strip()[-800:]}")
    return Env(repo=REPO, prefix=PREFIX, run_tag=RUN_TAG, uri=LIBVIRT_URI, bridge="lxcbr0")


# --------------------------------------------------------------------------------------------
# LXC

class LxcTestContainer:
    """A busybox LXC container made by integration/lxc-container.sh, driven by python3-lxc."""

    def __init__(self, name: str, lxcpath: str | None):
        import lxc  # python3-lxc (distro package, visible through --system-site-packages)
        self.name = name
        self.lxcpath = lxcpath or lxc.default_config_path
        self._lxc = lxc
        self.container = lxc.Container(name, self.lxcpath)

    def __repr__(self):
        return f"LxcTestContainer({self.name!r}, lxcpath={self.lxcpath!r})"

    def _script(self, action: str) -> None:
        env = dict(os.environ, LXCPATH=self.lxcpath)
        r = subprocess.run([str(INTEGRATION / "lxc-container.sh"), action, self.name],
                           env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"lxc-container.sh {action} {self.name}: {r.stderr.strip()}")

    def _reload(self) -> None:
        self.container = self._lxc.Container(self.name, self.lxcpath)

    def state(self) -> str:
        """RUNNING, STOPPED, FROZEN, ... as python3-lxc reports it."""
        self._reload()
        return self.container.state

    def start(self, timeout: float = 30) -> int:
        """Start (daemonized, inherited fds closed), wait for RUNNING; return the init pid."""
        self._reload()
        if not self.container.start(close_fds=True):
            raise RuntimeError(f"lxc start {self.name} failed")
        if not self.container.wait("RUNNING", timeout):
            raise RuntimeError(f"{self.name} did not reach RUNNING within {timeout}s")
        pid = self.init_pid()
        if pid <= 0:
            raise RuntimeError(f"{self.name} RUNNING but init pid is {pid}")
        return pid

    def stop(self, timeout: float = 30) -> None:
        """Kill the container (as ``lxc-stop -k``) and wait for STOPPED."""
        self._reload()
        if self.container.state == "STOPPED":
            return
        self.container.stop()
        if not self.container.wait("STOPPED", timeout):
            raise RuntimeError(f"{self.name} did not reach STOPPED within {timeout}s")

    def init_pid(self) -> int:
        """Host pid of the container's init, or -1 when not running."""
        self._reload()
        return int(self.container.init_pid)

    def attach(self, *argv: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        """Run ``lxc-attach -n NAME -P LXCPATH -- argv`` and return the completed process."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(["lxc-attach", "-n", self.name, "-P", self.lxcpath, "--", *argv],
                              timeout=timeout, **kw)

    def info(self) -> str:
        r = subprocess.run(["lxc-info", "-n", self.name, "-P", self.lxcpath],
                           capture_output=True, text=True, timeout=30)
        return r.stdout

    def destroy(self) -> None:
        """Stop if needed and remove the container; no-op if it is already gone."""
        self._script("destroy")


@pytest.fixture
def lxc_container(env_ready):
    """Factory: ``lxc_container(label="ct", *, start=False, lxcpath=None)`` -> LxcTestContainer.

    Creates a busybox container (``lxc-create -t busybox``) named
    ``lxccr-test-<pid>-<label>-<hex>``; with ``start=True`` also starts it.  Every container
    made is destroyed at teardown, whatever the test did.
    """
    require(shutil.which("lxc-create") is not None, "lxc-create not installed (apt: lxc)")
    try:
        import lxc  # noqa: F401
    except ImportError as e:
        require(False, f"python3-lxc not importable: {e}")

    made: list[LxcTestContainer] = []

    def make(label: str = "ct", *, start: bool = False, lxcpath: str | None = None):
        ct = LxcTestContainer(_unique_name(label), lxcpath)
        made.append(ct)
        ct._script("create")
        ct._reload()
        if start:
            ct.start()
        return ct

    yield make

    errors = []
    for ct in reversed(made):
        try:
            ct.destroy()
        except Exception as e:  # keep destroying the others
            errors.append(f"{ct.name}: {e}")
    if errors:
        pytest.fail("lxc_container teardown: " + "; ".join(errors), pytrace=False)


# --------------------------------------------------------------------------------------------
# libvirt

DEFAULT_INITARGS = ("-c", "while :; do sleep 1; done")


def domain_xml(name: str, *, init: str = "/bin/sh", initargs=DEFAULT_INITARGS,
               memory_mib: int = 64) -> str:
    """XML of an LXC domain on the host's root file system running ``init initargs...``."""
    from xml.sax.saxutils import escape
    args = "".join(f"<initarg>{escape(a)}</initarg>" for a in initargs)
    return f"""<domain type='lxc'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>{int(memory_mib)}</memory>
  <os>
    <type>exe</type>
    <init>{escape(init)}</init>
    {args}
  </os>
  <devices>
    <console type='pty'/>
  </devices>
</domain>
"""


@pytest.fixture
def libvirt_conn(env_ready):
    """An open ``libvirt.virConnect`` on lxc:///system, closed at teardown."""
    try:
        import libvirt
    except ImportError as e:
        require(False, f"python3-libvirt not importable: {e}")
    try:
        conn = libvirt.open(LIBVIRT_URI)
    except libvirt.libvirtError as e:
        require(False, f"cannot connect to {LIBVIRT_URI}: {e}")
    yield conn
    try:
        conn.close()
    except libvirt.libvirtError:
        pass


@pytest.fixture
def libvirt_domain(libvirt_conn):
    """Factory: ``libvirt_domain(label="dom", *, persistent=False, start=True, init="/bin/sh",
    initargs=("-c", "while :; do sleep 1; done"), memory_mib=64, xml=None)`` -> virDomain.

    Transient (createXML) by default; ``persistent=True`` defines it (and starts it unless
    ``start=False``).  ``xml`` may be a format string with ``{name}``.  At teardown every
    domain made is looked up by name, destroyed if active and undefined if persistent.
    """
    import libvirt

    names: list[str] = []

    def make(label: str = "dom", *, persistent: bool = False, start: bool = True,
             init: str = "/bin/sh", initargs=DEFAULT_INITARGS, memory_mib: int = 64,
             xml: str | None = None):
        name = _unique_name(label)
        names.append(name)
        text = xml.format(name=name) if xml else domain_xml(
            name, init=init, initargs=initargs, memory_mib=memory_mib)
        if persistent:
            dom = libvirt_conn.defineXML(text)
            if start:
                dom.create()
        else:
            if not start:
                raise ValueError("a transient domain is started when it is created")
            dom = libvirt_conn.createXML(text, 0)
        return dom

    yield make

    errors = []
    for name in reversed(names):
        try:
            dom = libvirt_conn.lookupByName(name)
        except libvirt.libvirtError:
            continue                          # never created, or already gone
        try:
            persistent = dom.isPersistent()   # ask first: a destroyed transient one is gone
            if dom.isActive():
                dom.destroy()
            if persistent:
                dom.undefine()
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                errors.append(f"{name}: {e}")
    for name in names:
        _drop_libvirt_litter(name)
    if errors:
        pytest.fail("libvirt_domain teardown: " + "; ".join(errors), pytrace=False)


def _drop_libvirt_litter(name: str) -> None:
    """libvirt leaves NAME.{dev,devpts,fuse} (empty dirs) and NAME.sock in /run/libvirt/lxc
    after an LXC domain ends; remove them once the domain no longer runs."""
    run = Path("/run/libvirt/lxc")
    if (run / f"{name}.xml").exists():
        return
    for suffix in (".dev", ".devpts", ".fuse"):
        try:
            (run / f"{name}{suffix}").rmdir()
        except OSError:
            pass
    try:
        (run / f"{name}.sock").unlink()
    except OSError:
        pass


def virsh(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``virsh -c lxc:///system ARGS`` with captured text output."""
    return subprocess.run(["virsh", "-c", LIBVIRT_URI, *args], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------------------------
# C workloads

@pytest.fixture
def cc(tmp_path):
    """``cc(source, *flags, name="prog")`` -> Path of the binary gcc built from ``source``.

    Compiled with ``-O1 -g -Wall`` plus ``flags`` (e.g. ``"-static"``, ``"-pthread"``) in the
    test's tmp_path.  A compiler error fails the test with gcc's message.
    """
    gcc = shutil.which("gcc")

    def build(source: str, *flags: str, name: str = "prog") -> Path:
        require(gcc is not None, "gcc not installed")
        src = tmp_path / f"{name}.c"
        out = tmp_path / name
        src.write_text(source)
        r = subprocess.run([gcc, "-O1", "-g", "-Wall", "-o", str(out), str(src), *flags],
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            pytest.fail(f"gcc {' '.join(flags)} {src.name} failed:\n{r.stderr}", pytrace=False)
        return out

    return build


# --------------------------------------------------------------------------------------------
# processes

def _starttime(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (split at the last ')'), or None if the pid is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(data[data.rindex(b")") + 2:].split()[19])


class ProcessReaper:
    """Kills what a test registered, at teardown: pids, Popen objects and process groups.

    A pid is remembered with its start time so a reused pid is never killed.
    """

    def __init__(self):
        self._pids: list[tuple[int, int | None]] = []
        self._groups: list[int] = []
        self._popens: list[subprocess.Popen] = []

    def add(self, proc) -> None:
        """Register a pid (int) or a subprocess.Popen."""
        if isinstance(proc, subprocess.Popen):
            self._popens.append(proc)
            proc = proc.pid
        self._pids.append((int(proc), _starttime(int(proc))))

    append = add

    def add_group(self, pgid: int) -> None:
        """Register a process group: SIGKILL goes to every member."""
        self._groups.append(int(pgid))

    def kill_all(self) -> None:
        for pgid in self._groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for pid, start in self._pids:
            if start is not None and _starttime(pid) == start:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in self._popens:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        # reap any other children of ours among them, so no zombie outlives the test
        for pid, _ in self._pids:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


@pytest.fixture
def cleanup_pids():
    """A ProcessReaper: ``cleanup_pids.add(pid_or_popen)``, ``cleanup_pids.add_group(pgid)``;
    everything registered is SIGKILLed (and reaped if ours) at teardown."""
    reaper = ProcessReaper()
    yield reaper
    reaper.kill_all()
