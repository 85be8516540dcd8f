"""Crash safety of a dump: intent records, the freezer watchdog and ``lxc-cr recover``.

Before a dump stops anything it writes an *intent* (JSON, 0600, written under a temporary
name, fsynced and renamed) to ``/run/lxc-cr/intent/KIND-NAME.PID.json``::

    {"owner_pid": 4242, "owner_start": 123456,       # /proc/PID/stat field 22 (starttime)
     "kind": "lxc", "name": "web", "freezer": "/sys/fs/cgroup/freezer/lxc.payload.web",
     "image": "/srv/ckpt/lxc-cr.img", "temp": "/srv/ckpt/.lxc-cr.img.tmp-4242",
     "image_before": [ino, mtime_ns] | null, "created": 1764590000000000000,
     "affinity": {"4300": [starttime, [0, 1]], ...}}   # added once the tree is frozen

and removes it when the dump ends, on success and on every handled failure.  If the dumper
dies instead (SIGKILL, OOM), the intent stays behind, naming what to undo:

- a dump that freezes a cgroup starts a detached watchdog first (``python -m lxc_cr.intent
  --watchdog``, through ``sh -c '... &'`` in a new session, so it is nobody's child; every
  fd closed but the read end of a pipe whose write end only the dumper holds).  At EOF it
  waits on a pidfd of the dumper, so the kernel has detached every traced thread before it
  acts; if the intent is still there it gives the threads the dump had pinned to its own
  CPU their affinity back (``kernel.ptrace.Colocation``), thaws the cgroup, removes the
  temporary image (and the image the dead dump renamed into place, see ``image_before``)
  and the intent, and logs one line to syslog and /var/log/lxc-cr/recover.log;
- ``lxc-cr recover`` does the same for every intent whose owner is dead (pid gone or its
  start time differs), and removes stale temporary images (``.NAME.tmp-PID`` of a dead PID)
  in the directories the intents name;
- every dump and every LXC or libvirt restore first runs that for its own target
  (``recover_target``), so a retry after a crash just works.

Threads that were only ptrace-stopped need nothing: the kernel detaches them when their
tracer dies and they run on (the dump keeps their own registers and signal mask in place
between injected syscalls, and a trampoline puts them back if it dies during one, see
``kernel.ptrace.GuardedRemote``).
"""

from __future__ import annotations

import json
import os
import re
import select
import sys
import syslog
import time
from dataclasses import asdict, dataclass, field

from lxc_cr import atomicfile
from lxc_cr.errors import OperationFailed

INTENT_DIR = "/run/lxc-cr/intent"
LOG_DIR = "/var/log/lxc-cr"
LOG_FILE = f"{LOG_DIR}/recover.log"
# the writer's temporary name (image/writer.py): .BASE.tmp-PID in the image's directory
TEMP_RE = re.compile(r"^\.(?P<base>.+)\.tmp-(?P<pid>\d+)$")
# directories lxc-cr itself writes images into, scanned for stale temporaries too
KNOWN_IMAGE_DIRS = ("/var/lib/lxc-cr/libvirt",)


@dataclass
class Intent:
    """An intent record: what a dump in progress would leave to undo."""

    owner_pid: int
    owner_start: int
    kind: str
    name: str
    freezer: str
    image: str
    temp: str
    image_before: list | None
    created: int
    # threads the dump pinned to its own CPU (ptrace.Colocation) and what they had before:
    # {tid: [start time, [cpu, ...]]}.  Their affinity does not return with their tracer's
    # death, so whoever resolves the intent gives it back
    affinity: dict = field(default_factory=dict)
    path: str = ""

    @property
    def target(self) -> str:
        return f"{self.kind}:{self.name}"


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, starttime): fields 3 and 22 of /proc/PID/stat, split after the last ')'."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[0].decode(), int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def start_time(pid: int) -> int | None:
    """Start time of a live (not zombie) pid, None if there is no such process."""
    st = _stat(pid)
    return None if st is None or st[0] in ("Z", "X") else st[1]


def owner_alive(rec: Intent) -> bool:
    return start_time(rec.owner_pid) == rec.owner_start


def temp_path(image: str, pid: int) -> str:
    d, base = os.path.split(os.path.abspath(image))
    return os.path.join(d, f".{base}.tmp-{pid}")


def _identity(path: str) -> list | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_ino, st.st_mtime_ns]


# --- intent files -------------------------------------------------------------------------

def write(rec: Intent) -> str:
    os.makedirs(INTENT_DIR, mode=0o700, exist_ok=True)
    safe = rec.name.replace("/", "_")
    path = os.path.join(INTENT_DIR, f"{rec.kind}-{safe}.{rec.owner_pid}.json")
    atomicfile.write_json(path, {k: v for k, v in asdict(rec).items() if k != "path"})
    rec.path = path
    return path


def load(path: str) -> Intent | None:
    try:
        with open(path) as f:
            data = json.load(f)
        return Intent(**{k: data[k] for k in Intent.__dataclass_fields__
                         if k not in ("path", "affinity")},
                      affinity=data.get("affinity") or {}, path=path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return Intent(owner_pid=0, owner_start=-1, kind="?", name=os.path.basename(path),
                      freezer="", image="", temp="", image_before=None, created=0, path=path)


def intents() -> list[Intent]:
    try:
        names = sorted(os.listdir(INTENT_DIR))
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        if n.endswith(".json"):
            rec = load(os.path.join(INTENT_DIR, n))
            if rec is not None:
                out.append(rec)
    return out


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


# --- undoing a dead dump ------------------------------------------------------------------

def freezer_state(directory: str) -> str | None:
    """FROZEN, FREEZING or THAWED; None when the cgroup is gone (the container stopped)."""
    try:
        if os.path.exists(f"{directory}/freezer.state"):
            with open(f"{directory}/freezer.state") as f:
                return f.read().strip()
        with open(f"{directory}/cgroup.events") as f:
            return "FROZEN" if "frozen 1" in f.read() else "THAWED"
    except OSError:
        return None


def thaw(directory: str) -> bool:
    """Thaw a v1 or v2 freezer cgroup; False when it does not exist (any more)."""
    for name, value in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
        if os.path.exists(f"{directory}/{name}"):
            try:
                with open(f"{directory}/{name}", "w") as f:
                    f.write(value)
                return True
            except FileNotFoundError:
                return False
    return False


def resolve(rec: Intent, who: str) -> list[str]:
    """Undo what the dead owner of ``rec`` left: thaw, remove partial images, drop the
    intent.  Returns one line per action; logs one line for all of them (before the
    intent goes, so whoever sees the intent gone finds the log line)."""
    acts = []
    given = _give_back(rec.affinity)      # before they run again
    if given:
        acts.append(f"gave {given} threads their CPU affinity back")
    if rec.freezer and freezer_state(rec.freezer) not in (None, "THAWED") and thaw(rec.freezer):
        acts.append(f"thawed {rec.freezer}")
    if rec.temp and _unlink(rec.temp):
        acts.append(f"removed temporary image {rec.temp}")
    # the dead dump renamed its image into place but did not finish (verify, kill): an
    # unfinished dump leaves no file named IMAGE (an older image it replaced is gone anyway)
    if rec.image and _identity(rec.image) not in (None, rec.image_before) and _unlink(rec.image):
        acts.append(f"removed unfinished image {rec.image}")
    if rec.image:
        acts += remove_stale_temps(os.path.dirname(os.path.abspath(rec.image)))
    if os.path.exists(rec.path):
        acts.append(f"removed intent {rec.path}")
    why = f"(dump by pid {rec.owner_pid} died)"
    if acts:
        log(f"{who}: {rec.target}: {'; '.join(acts)} {why}")
    _unlink(rec.path)
    return [f"{rec.target}: {a} {why}" for a in acts]


def remove_stale_temps(directory: str) -> list[str]:
    """Temporary images (``.BASE.tmp-PID``) in ``directory`` whose writer PID is gone."""
    out = []
    try:
        names = os.listdir(directory)
    except OSError:
        return out
    for n in names:
        m = TEMP_RE.match(n)
        if m and start_time(int(m.group("pid"))) is None:
            p = os.path.join(directory, n)
            if _unlink(p):
                out.append(f"removed stale temporary image {p}")
    return out


def log(line: str) -> None:
    try:
        syslog.openlog("lxc-cr", syslog.LOG_PID, syslog.LOG_DAEMON)
        syslog.syslog(syslog.LOG_WARNING, line)
    except OSError:
        pass
    try:
        os.makedirs(LOG_DIR, mode=0o700, exist_ok=True)
        with open(LOG_FILE, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {line}\n")
    except OSError:
        pass


def recover_target(kind: str, name: str, out=sys.stderr) -> list[str]:
    """The cheap part of ``recover`` run by every dump and LXC or libvirt restore for its
    own target, before anything else (a cgroup left frozen would stall its checks)."""
    lines = []
    for rec in intents():
        if rec.kind == kind and rec.name == name and not owner_alive(rec):
            lines += resolve(rec, "recover")
    if out is not None:
        for line in lines:
            out.write(f"lxc-cr: recovered {line}\n")
    return lines


def recover(out) -> int:
    """``lxc-cr recover``: 0 once nothing a dead dump froze is left frozen."""
    left = []
    dirs = set(KNOWN_IMAGE_DIRS)
    acted = False
    for rec in intents():
        if rec.image:
            dirs.add(os.path.dirname(os.path.abspath(rec.image)))
        if owner_alive(rec):
            out.write(f"{rec.target}: dump in progress (pid {rec.owner_pid}), left alone\n")
            continue
        for line in resolve(rec, "recover"):
            out.write(line + "\n")
            acted = True
        if rec.freezer and freezer_state(rec.freezer) not in (None, "THAWED"):
            left.append(rec.freezer)
    for d in sorted(dirs):
        for line in remove_stale_temps(d):
            log(f"recover: {line}")
            out.write(line + "\n")
            acted = True
    if left:
        raise OperationFailed(f"still frozen: {', '.join(left)}")
    if not acted:
        out.write("nothing to recover\n")
    return 0


def run(args) -> int:
    return recover(sys.stdout)


# --- the dumper's side --------------------------------------------------------------------

def _give_back(affinity: dict) -> int:
    """Set each recorded thread that still runs (same start time) to its recorded CPUs."""
    n = 0
    for tid, (start, cpus) in affinity.items():
        try:
            if start_time(int(tid)) == start:
                os.sched_setaffinity(int(tid), cpus)
                n += 1
        except (OSError, ValueError):
            continue
    return n


class Held:
    """An intent written by this process (and its watchdog, if any) until ``end()``."""

    def __init__(self, rec: Intent, watch_fd: int):
        self.rec = rec
        self.watch_fd = watch_fd

    def pinned(self, saved: dict) -> None:
        """The dump is about to pin these threads ({tid: their affinity now}): the intent
        records them first, so that a dead dumper's recovery gives it back."""
        if not self.rec.path or not saved:
            return
        self.rec.affinity = {str(tid): [start, sorted(mask)] for tid, mask in saved.items()
                             if (start := start_time(tid)) is not None}
        write(self.rec)

    def end(self) -> None:
        if self.rec.path:
            _unlink(self.rec.path)
            self.rec.path = ""
        if self.watch_fd >= 0:
            os.close(self.watch_fd)      # EOF: the watchdog finds no intent and exits
            self.watch_fd = -1


def begin(kind: str, name: str, image: str, freezer=None) -> Held:
    """Record the intent of a dump of ``kind:name`` into ``image``; with a freezer (an
    object with ``.dir``), start the watchdog.  Call before anything is frozen."""
    me = os.getpid()
    rec = Intent(owner_pid=me, owner_start=start_time(me) or 0, kind=kind, name=name,
                 freezer=getattr(freezer, "dir", "") if freezer is not None else "",
                 image=os.path.abspath(image), temp=temp_path(image, me),
                 image_before=_identity(image), created=time.time_ns())
    write(rec)
    fd = -1
    if freezer is not None:
        try:
            fd = _start_watchdog(rec)
        except OSError as e:
            _unlink(rec.path)
            raise OperationFailed(f"cannot start the freezer watchdog: {e.strerror or e}") from None
    return Held(rec, fd)


WATCH_FD = 3        # the watchdog's end of the watch pipe


def _start_watchdog(rec: Intent) -> int:
    """Start the watchdog of ``rec``; return the write end of its pipe.

    A fresh interpreter, not a fork of the dumper: a forked copy that lives through the
    dump shares the dumper's memory copy-on-write, and the dumper, which writes to most
    of its pages (reference counts), then took about 2000 more page faults (a busybox
    container's checkpoint: 6600 instead of 4560) to copy them back.  ``sh`` runs it in
    the background and exits at once, as the first child of a double fork did; its
    stdin, stdout and stderr are /dev/null from the start."""
    r, w = os.pipe()                      # both O_CLOEXEC: no later child inherits w
    argv = ["/bin/sh", "-c", '"$@" &', "sh", sys.executable, "-P", "-m", "lxc_cr.intent",
            "--watchdog", rec.path]
    actions = []                          # r first: it may be fd 0 if stdin was closed
    if r == WATCH_FD:
        os.set_inheritable(r, True)
    else:
        actions.append((os.POSIX_SPAWN_DUP2, r, WATCH_FD))
    actions += [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDWR, 0),
                (os.POSIX_SPAWN_DUP2, 0, 1), (os.POSIX_SPAWN_DUP2, 0, 2)]
    try:
        sh = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions, setsid=True)
    except OSError:
        os.close(w)
        raise
    finally:
        os.close(r)
    os.waitpid(sh, 0)
    return w


def _watchdog_main(argv: list[str]) -> int:
    """``python -m lxc_cr.intent --watchdog PATH`` (``_start_watchdog``), with the read end
    of the watch pipe as fd WATCH_FD."""
    if len(argv) != 2 or argv[0] != "--watchdog":
        sys.stderr.write("usage: python -m lxc_cr.intent --watchdog INTENT\n")
        return 2
    rec = load(argv[1])
    if rec is None:
        return 0                          # the dump has ended already
    try:
        _watchdog(rec, WATCH_FD)
    except BaseException as e:            # noqa: BLE001 - the watchdog must log, not die
        log(f"watchdog: {rec.target}: internal error: {type(e).__name__}: {e}")
    return 0


def _watchdog(rec: Intent, r: int) -> None:
    """The detached watchdog: only ``r`` (and 0-2 on /dev/null) stays open."""
    os.chdir("/")                         # keep no mount busy
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    top = os.sysconf("SC_OPEN_MAX")
    os.closerange(3, r)
    os.closerange(r + 1, top)
    try:
        pidfd = os.pidfd_open(rec.owner_pid)
    except OSError:
        pidfd = -1                        # already gone
    if pidfd >= 0 and start_time(rec.owner_pid) != rec.owner_start:
        os.close(pidfd)
        pidfd = -1
    p = select.poll()
    p.register(r, select.POLLIN | select.POLLHUP)
    while True:                           # EOF: the dumper ended the intent, or died
        p.poll()
        if not os.read(r, 64):
            break
    cur = load(rec.path)
    if cur is None or cur.owner_pid != rec.owner_pid:
        return                            # ended normally
    dead = pidfd < 0
    if pidfd >= 0:
        # the write end closes early in exit(); the pidfd turns readable only once the
        # dumper has fully exited (a zombie) and the kernel has detached its tracees
        q = select.poll()
        q.register(pidfd, select.POLLIN)
        dead = bool(q.poll(120_000))
    cur = load(rec.path)                  # as the dumper last wrote it (Held.pinned)
    if cur is not None and (dead or not owner_alive(rec)):
        resolve(cur if cur.owner_pid == rec.owner_pid else rec, "watchdog")


if __name__ == "__main__":
    sys.exit(_watchdog_main(sys.argv[1:]))
