"""``lxc-cr host shutdown`` / ``lxc-cr host boot``: keep containers across a host reboot.

shutdown: find every running LXC container (python3-lxc, each lxcpath of the policy) and
libvirt LXC domain, and apply the policy (lxc_cr/policy.py) to each, ``parallelism`` at a
time:

* ``checkpoint``: preflight (the checks of ``lxc-cr check``), then ``lxc checkpoint --stop``
  into IMAGE_DIR/lxc/NAME, or a managed save of a domain (/var/lib/lxc-cr/libvirt/NAME.save,
  where libvirt's start hook and ``lxc-cr virsh start`` look for it).  Transient failures
  (the container's lock is busy, it is starting or stopping, the freezer answers EBUSY) are
  retried with tenacity within a bounded budget.  Any other failure -- an unsupported
  resource, the per-container timeout, a full disk -- falls back to a clean shutdown and
  the reason is logged.  The image is registered in lxc_cr.pending, so a plain start of
  the container (with the hooks installed) resumes it too.
* ``shutdown``: clean shutdown (``lxc-stop -t TIMEOUT --nokill``, then kill; libvirt
  shutdown, then destroy).
* ``ignore``: left alone.

Each checkpoint and restore runs in its own worker process (lxc_cr/host_worker.py), so
a timeout can interrupt it (SIGINT: the dump resumes the container and removes its image)
and one crash never takes the others down.

The manifest, IMAGE_DIR/manifest.json (0600, replaced atomically after each container),
lists every container handled with its outcome, image, size and sha256.  boot reads it,
verifies each image's checksum and restores in policy order (``order``, lower first; equal
orders in parallel); a restore that fails cold-starts the container instead and says why.
An entry is marked done (and its pending record consumed) only after that.  Containers
shut down are cold-started again unless their policy says ``start_at_boot: false``.

One log line per container, on stderr and in the journal (python3-systemd, else syslog):
``lxc-cr host: lxc web: checkpointed in 0.42 s (/var/lib/lxc-cr/host/lxc/web/lxc-cr.img)``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import hashlib
import itertools
import json
import os
import subprocess
import sys
import threading
import time

from lxc_cr import atomicfile, pending
from lxc_cr.errors import BadInput, LxcCrError, OperationFailed
from lxc_cr.host_worker import attempt
from lxc_cr.policy import DEFAULT_URI, Policy, Settings

MANIFEST = "manifest.json"
FORMAT = 1
LOG_TAG = "lxc-cr host"
LIBVIRT_SOCKETS = ("libvirt-sock", "virtlxcd-sock")


# --- logging --------------------------------------------------------------------------------

_log_lock = threading.Lock()


def _journal_is_stderr() -> bool:
    """Under systemd, stderr may already be the journal (JOURNAL_STREAM=dev:ino)."""
    want = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return want == f"{st.st_dev}:{st.st_ino}"


def _to_journal(line: str, fields: dict) -> None:
    try:
        from systemd import journal
    except ImportError:
        journal = None
    if journal is not None:
        try:
            journal.send(line, SYSLOG_IDENTIFIER="lxc-cr",
                         **{f"LXC_CR_{k.upper()}": str(v) for k, v in fields.items()})
            return
        except OSError:
            pass
    if os.path.exists("/dev/log"):
        import syslog
        syslog.openlog("lxc-cr", 0, syslog.LOG_DAEMON)
        syslog.syslog(syslog.LOG_INFO, line)


def log(kind: str, name: str, text: str, **fields) -> None:
    """One greppable line: ``lxc-cr host: KIND NAME: TEXT``, on stderr and in the journal."""
    line = f"{LOG_TAG}: {kind} {name}: {text}" if name else f"{LOG_TAG}: {text}"
    with _log_lock:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
        if not _journal_is_stderr():
            _to_journal(line, dict(fields, kind=kind, name=name))


# --- targets and the manifest ---------------------------------------------------------------

@dataclasses.dataclass
class Target:
    """One container or domain that ``host shutdown`` and ``host boot`` act on."""

    kind: str                       # "lxc" or "libvirt"
    name: str
    where: str                      # lxcpath, or libvirt URI
    settings: Settings
    persistent: bool = True

    @property
    def key(self) -> tuple:
        return (self.kind, self.name, self.where)

    def image(self, image_dir: str | None) -> str:
        """What the restore takes: the checkpoint directory (lxc) or the save file (libvirt)."""
        if self.kind == "libvirt":
            from lxc_cr.runtime import libvirt as virt
            return virt.managed_path(self.name)
        base = image_dir or self.settings.image_dir
        suffix = ""
        if os.path.realpath(self.where) != os.path.realpath(_default_lxcpath()):
            suffix = "@" + hashlib.sha256(os.path.realpath(self.where).encode()).hexdigest()[:12]
        return os.path.join(base, "lxc", self.name + suffix)


def _image_file(kind: str, image: str) -> str:
    from lxc_cr.runtime.lxc import IMAGE_NAME
    return os.path.join(image, IMAGE_NAME) if kind == "lxc" else image


def _default_lxcpath() -> str:
    try:
        import lxc
        return lxc.default_config_path
    except ImportError:
        return pending.DEFAULT_LXCPATH


def sha256_file(path: str) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


class Manifest:
    """IMAGE_DIR/manifest.json, locked (flock on manifest.lock) for a whole run."""

    def __init__(self, image_dir: str):
        self.dir = image_dir
        self.path = os.path.join(image_dir, MANIFEST)
        self.entries: list[dict] = []
        self._lock = threading.Lock()
        self._fd: int | None = None

    def __enter__(self):
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self._fd = os.open(os.path.join(self.dir, "manifest.lock"),
                           os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)      # a second host run waits for the first
        self.entries = self.read()
        return self

    def __exit__(self, *exc):
        os.close(self._fd)

    def read(self) -> list[dict]:
        try:
            with open(self.path) as f:
                data = json.load(f)
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as e:
            raise BadInput(f"{self.path}: unreadable manifest: {e}", path=self.path) from None
        if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
            raise BadInput(f"{self.path}: not an lxc-cr host manifest", path=self.path)
        return [e for e in data["entries"] if isinstance(e, dict)]

    def put(self, entry: dict) -> None:
        """Replace the entry of the same target (or add it) and write the file.  A write
        that fails (a full disk) is logged, never allowed to stop the other containers."""
        with self._lock:
            key = _entry_key(entry)
            self.entries = [e for e in self.entries if _entry_key(e) != key] + [entry]
            try:
                self._write()
            except OSError as e:
                log("", "", f"cannot write {self.path}: {e.strerror or e}")

    def _write(self) -> None:
        data = {"format": FORMAT, "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "entries": self.entries}
        atomicfile.write_json(self.path, data, indent=1, sort_keys=True)


def _entry_key(e: dict) -> tuple:
    return (e.get("kind"), e.get("name"), e.get("lxcpath") or e.get("uri"))


# --- discovery ------------------------------------------------------------------------------

def discover(policy: Policy, only: set[str] | None, kinds: set[str]) -> tuple[list[Target], list[str]]:
    """Running containers and domains in scope, and problems met while looking."""
    targets, problems = [], []

    def wanted(name: str, listed: bool) -> bool:
        if only is not None:
            return name in only
        return listed

    if "lxc" in kinds:
        try:
            import lxc
        except ImportError as e:
            problems.append(f"python3-lxc is not available: {e}")
        else:
            for lxcpath in policy.lxcpaths or [lxc.default_config_path]:
                for name in lxc.list_containers(active=True, defined=False, config_path=lxcpath):
                    if wanted(name, policy.covers_lxc(name)):
                        targets.append(Target("lxc", name, lxcpath, policy.lxc(name)))
    if "libvirt" in kinds and policy.libvirt_uri:
        from lxc_cr.runtime import libvirt as virt
        try:
            lv = virt._libvirt()
        except LxcCrError:
            return targets, problems              # python3-libvirt not installed: no domains
        if policy.libvirt_uri == DEFAULT_URI and not any(
                os.path.exists(f"/run/libvirt/{s}") for s in LIBVIRT_SOCKETS):
            return targets, problems              # no libvirt daemon on this host
        try:
            conn = virt.connect(policy.libvirt_uri)
            for dom in conn.listAllDomains(lv.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                name = dom.name()
                if wanted(name, policy.covers_domain(name)):
                    targets.append(Target("libvirt", name, policy.libvirt_uri,
                                          policy.domain(name), bool(dom.isPersistent())))
        except (LxcCrError, lv.libvirtError) as e:
            problems.append(f"libvirt ({policy.libvirt_uri}): {e}")
    return targets, problems


# --- clean shutdown and cold start ----------------------------------------------------------

def clean_stop(t: Target) -> str:
    """Stop T cleanly within its timeout, then kill it.  Returns how it ended."""
    timeout = max(1, int(t.settings.timeout))
    if t.kind == "lxc":
        _thaw_lxc(t)
        r = _run(["lxc-stop", "-n", t.name, "-P", t.where, "-t", str(timeout), "--nokill"],
                 timeout + 30)
        if r.returncode == 0 or not _lxc_running(t):
            return "shut down cleanly"
        _run(["lxc-stop", "-n", t.name, "-P", t.where, "-k"], 60)
        if _lxc_running(t):
            raise OperationFailed(f"{t.name}: still running after lxc-stop -k")
        return f"killed after a clean shutdown timed out ({timeout} s)"
    from lxc_cr.runtime import libvirt as virt
    lv = virt._libvirt()
    try:
        dom = virt.lookup(virt.connect(t.where), t.name)
    except LxcCrError:
        return "already gone"
    with contextlib.suppress(lv.libvirtError):
        if dom.isActive() and dom.state()[0] == lv.VIR_DOMAIN_PAUSED:
            dom.resume()
    try:
        dom.shutdown()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _dom_active(dom):
                return "shut down cleanly"
            time.sleep(0.2)
    except lv.libvirtError:
        pass
    if not _dom_active(dom):
        return "shut down cleanly"
    try:
        dom.destroy()
    except lv.libvirtError as e:
        if _dom_active(dom):
            raise OperationFailed(f"domain '{t.name}': destroy failed: {e}") from None
    return f"destroyed after a clean shutdown timed out ({timeout} s)"


def _dom_active(dom) -> bool:
    from lxc_cr.runtime import libvirt as virt
    try:
        return bool(dom.isActive())
    except virt._libvirt().libvirtError:      # a transient domain is gone once it stopped
        return False


def _thaw_lxc(t: Target) -> None:
    """A dump interrupted hard can leave the container frozen; a frozen one cannot halt."""
    try:
        from lxc_cr.kernel.cgroup import Freezer
        from lxc_cr.runtime import lxc as lxc_rt
        c = lxc_rt.container(t.name, t.where)
        if c.state == "FROZEN":
            c.unfreeze()
        if c.init_pid > 0:
            Freezer(c.init_pid).thaw()
    except (LxcCrError, OSError):
        pass


def _running(t: Target) -> bool:
    if t.kind == "lxc":
        return _lxc_running(t)
    from lxc_cr.runtime import libvirt as virt
    try:
        return _dom_active(virt.lookup(virt.connect(t.where), t.name))
    except LxcCrError:
        return False


def _lxc_running(t: Target) -> bool:
    from lxc_cr.runtime import lxc as lxc_rt
    try:
        return lxc_rt.container(t.name, t.where).state != "STOPPED"
    except LxcCrError:
        return False


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 124, "", f"{argv[0]} timed out")


def cold_start(t: Target) -> str:
    """Start T from scratch; its pending image (if any) must be consumed before."""
    if t.kind == "lxc":
        if _lxc_running(t):
            return "already running"
        r = _run(["lxc-start", "-n", t.name, "-P", t.where, "-d"], 120)
        if r.returncode != 0:
            lines = (r.stderr or r.stdout).strip().splitlines()
            raise OperationFailed(f"lxc-start failed: {lines[-1] if lines else r.returncode}")
        return "cold-started"
    from lxc_cr.runtime import libvirt as virt
    lv = virt._libvirt()
    if not t.persistent:
        raise OperationFailed("a transient domain cannot be started without its image")
    dom = virt.lookup(virt.connect(t.where), t.name)
    if dom.isActive():
        return "already running"
    try:
        dom.create()
    except lv.libvirtError as e:
        raise OperationFailed(f"failed to start domain '{t.name}': {e}") from None
    return "cold-started"


# --- host shutdown --------------------------------------------------------------------------

def _elapsed(t0: float) -> str:
    return f"{time.monotonic() - t0:.2f} s"


def _base_entry(t: Target) -> dict:
    e = {"kind": t.kind, "name": t.name, "order": t.settings.order, "action": t.settings.action,
         "start_at_boot": t.settings.start_at_boot, "timeout": t.settings.timeout}
    if t.kind == "lxc":
        e["lxcpath"] = t.where
    else:
        e.update(uri=t.where, persistent=t.persistent)
    return e


def _guarded(fn, t: Target, *args) -> dict:
    """FN(*ARGS) for one container; a bug there ends in a clean shutdown of that container
    (at host shutdown) and one log line, never in the loss of the others."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - one container's failure never blocks the others
        why = f"internal error: {type(e).__name__}: {e}"
        how = "left as it was"
        if fn is _shutdown_one:
            try:
                how = clean_stop(t)
            except Exception as e2:  # noqa: BLE001
                how = f"not stopped: {e2}"
        log(t.kind, t.name, f"{why}; {how}", outcome="failed")
        return dict(_base_entry(t), outcome="failed", state="failed", error=why,
                    boot_error=why)


def _shutdown_one(t: Target, image_dir: str | None, use_policy: bool, manifest: Manifest) -> dict:
    t0 = time.monotonic()
    entry = _base_entry(t)
    kind = t.kind
    if use_policy and t.settings.action == "ignore":
        log(kind, t.name, "left running (policy: ignore)", outcome="ignored")
        return dict(entry, outcome="ignored", state="done")
    reason = None
    if use_policy and t.settings.action == "checkpoint":
        image = t.image(image_dir)
        res = attempt("checkpoint", t, image)
        if res.get("ok"):
            path = _image_file(kind, image)
            try:
                size, digest = sha256_file(path)
                pending.mark(kind, t.name, image, lxcpath=t.where if kind == "lxc" else None)
            except OSError as e:
                res = {"ok": False, "message": f"{path}: {e.strerror}"}
            else:
                entry.update(outcome="checkpointed", state="pending", image=image,
                             image_file=path, size=size, sha256=digest,
                             seconds=round(time.monotonic() - t0, 3))
                manifest.put(entry)
                log(kind, t.name, f"checkpointed in {_elapsed(t0)} ({path})",
                    outcome="checkpointed", image=path)
                return entry
        reason = res.get("message") or "checkpoint failed"
    elif not use_policy:
        reason = "no valid policy"
    try:
        how = clean_stop(t)
    except (LxcCrError, OSError) as e:
        entry.update(outcome="failed", state="done", reason=reason, error=str(e))
        manifest.put(entry)
        log(kind, t.name, f"NOT stopped: {e}" + (f" (checkpoint failed: {reason})" if reason
                                                  else ""), outcome="failed")
        return entry
    fallback = bool(reason and use_policy)
    if fallback:        # whatever a half-successful checkpoint registered is not to resume
        pending.consume(kind, t.name, t.where if kind == "lxc" else None)
    entry.update(outcome="shutdown", state="pending", how=how, reason=reason, fallback=fallback,
                 seconds=round(time.monotonic() - t0, 3))
    manifest.put(entry)
    if fallback:
        text = f"checkpoint failed: {reason}; {how} in {_elapsed(t0)}"
        outcome = "fallback"
    else:
        text = f"{how} in {_elapsed(t0)}" + (" (policy: shutdown)" if use_policy else "")
        outcome = "shutdown"
    log(kind, t.name, text, outcome=outcome, reason=reason or "")
    return entry


def _load_policy(config: str | None) -> tuple[Policy, BadInput | None]:
    from lxc_cr import policy as policy_mod
    try:
        return policy_mod.load(config), None
    except BadInput as e:
        return Policy(None, policy_mod.config_path(config)), e


def _policy_or_fallback(config: str | None, fallback: str):
    """The policy; if it is unusable, say why (the one error line) and what is done instead,
    and go on with an empty policy; returns (policy, the error or None)."""
    pol, bad = _load_policy(config)
    if bad is not None:
        sys.stderr.write(f"lxc-cr: error: {bad}\n")
        sys.stderr.flush()
        log("", "", f"the policy is unusable: {fallback}")
    return pol, bad


def shutdown(config: str | None = None, only: list[str] | None = None,
             kinds: list[str] | None = None, image_dir: str | None = None) -> int:
    pol, bad = _policy_or_fallback(config, "every container is shut down cleanly")
    mdir = image_dir or pol.image_dir
    targets, problems = discover(pol, set(only) if only else None,
                                 set(kinds or ("lxc", "libvirt")))
    for p in problems:
        log("", "", p)
    for name in sorted(set(only or ()) - {t.name for t in targets}):
        log("", "", f"{name}: no such running container or domain, nothing to do")
    # later boots first: shut the higher orders down first
    targets.sort(key=lambda x: (-x.settings.order, x.kind, x.name))
    results = []
    with Manifest(mdir) as manifest:
        # a new shutdown keeps only what an earlier boot has not restored yet
        manifest.entries = [e for e in manifest.entries if e.get("state") == "pending"]
        with concurrent.futures.ThreadPoolExecutor(max_workers=pol.parallelism) as pool:
            futs = [pool.submit(_guarded, _shutdown_one, t, t, image_dir, bad is None, manifest)
                    for t in targets]
            for f in futs:
                results.append(f.result())
    n_ck = sum(1 for r in results if r.get("outcome") == "checkpointed")
    degraded = [r for r in results if r.get("fallback") or r["outcome"] == "failed"]
    log("", "", f"shutdown: {len(results)} handled, {n_ck} checkpointed, "
        f"{len(degraded)} not as the policy asked; manifest {manifest.path}")
    if bad is not None:
        return bad.exit_code          # its one error line was printed first
    if degraded:
        first = degraded[0]
        raise OperationFailed(f"host shutdown: {len(degraded)} of {len(results)} containers "
                              f"not checkpointed as the policy asks ({first['kind']} "
                              f"{first['name']}: {first.get('reason') or first.get('error')})")
    if problems:
        raise OperationFailed(f"host shutdown: {problems[0]}")
    return 0


# --- host boot ------------------------------------------------------------------------------

def _target_of(e: dict, pol: Policy, use_policy: bool) -> Target:
    """The current policy's settings, or (policy unusable) those the manifest recorded."""
    recorded = Settings(order=e.get("order", 0), timeout=e.get("timeout", Settings.timeout),
                        start_at_boot=e.get("start_at_boot", True))
    if e["kind"] == "lxc":
        s = pol.lxc(e["name"]) if use_policy else recorded
        return Target("lxc", e["name"], e.get("lxcpath") or _default_lxcpath(), s)
    s = pol.domain(e["name"]) if use_policy else recorded
    return Target("libvirt", e["name"], e.get("uri") or DEFAULT_URI, s,
                  bool(e.get("persistent", True)))


def _boot_one(e: dict, t: Target, manifest: Manifest) -> dict:
    t0 = time.monotonic()
    kind, name = t.kind, t.name
    lxcpath = t.where if kind == "lxc" else None
    e = dict(e)
    if e.get("outcome") != "checkpointed":
        if not t.settings.start_at_boot:
            e.update(state="left-stopped")
            manifest.put(e)
            log(kind, name, "left stopped (policy: start_at_boot false)", outcome="left-stopped")
            return e
        try:
            how = cold_start(t)
        except (LxcCrError, OSError) as err:
            e.update(state="failed", boot_error=str(err))
            manifest.put(e)
            log(kind, name, f"cold start failed: {err}", outcome="failed")
            return e
        e.update(state="started")
        manifest.put(e)
        if how == "already running":
            log(kind, name, "already running (started by its manager's autostart)", outcome=how)
        else:
            log(kind, name, f"{how} in {_elapsed(t0)} (it was shut down, not checkpointed)",
                outcome=how)
        return e

    image, path = e["image"], e.get("image_file") or _image_file(kind, e["image"])
    if _running(t):
        # resumed meanwhile: LXC's start hook consumes the pending record, lxc-cr virsh
        # start removes the managed save
        if (pending.lookup(kind, name, lxcpath) is None if kind == "lxc"
                else not os.path.exists(image)):
            pending.consume(kind, name, lxcpath)
            e.update(state="restored", boot_note="resumed by its start hook")
            manifest.put(e)
            log(kind, name, "already resumed by its start hook", outcome="restored")
        else:
            e.update(state="failed", boot_error="running without its image (started cold)")
            manifest.put(e)
            log(kind, name, f"already running without its image; image kept ({path})",
                outcome="failed")
        return e
    why = _verify(path, e)
    res = {"ok": False, "message": why} if why else attempt("restore", t, image)
    if not why and not res.get("ok") and res.get("exit_code") != 2:
        # a failed restore leaves the container stopped and the image intact: one more
        # try before booting it cold (a bad image, exit code 2, is not tried again)
        again = attempt("restore", t, image)
        if not again.get("ok"):
            again["message"] = f"{res.get('message')}; again: {again.get('message')}"
        res = again
    if res.get("ok"):
        if kind == "libvirt":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(image)
        pending.consume(kind, name, lxcpath)
        e.update(state="restored", boot_seconds=round(time.monotonic() - t0, 3))
        manifest.put(e)
        log(kind, name, f"restored in {_elapsed(t0)} ({path})", outcome="restored", image=path)
        return e
    reason = res.get("message") or "restore failed"
    # the image must not be resumed later by a plain start: set it aside, keep it
    pending.consume(kind, name, lxcpath)
    if kind == "libvirt" and os.path.exists(image):
        os.rename(image, image + ".failed")
        path = image + ".failed"
    try:
        how = cold_start(t)
    except (LxcCrError, OSError) as err:
        e.update(state="failed", boot_error=f"{reason}; cold start failed: {err}")
        manifest.put(e)
        log(kind, name, f"restore failed: {reason}; cold start failed: {err}", outcome="failed")
        return e
    e.update(state="cold-started", boot_error=reason, image_kept=path)
    manifest.put(e)
    log(kind, name, f"restore failed: {reason}; {how} in {_elapsed(t0)} (image kept: {path})",
        outcome="cold-started", reason=reason)
    return e


def _verify(path: str, e: dict) -> str | None:
    try:
        size, digest = sha256_file(path)
    except OSError as err:
        return f"{path}: {err.strerror}"
    if digest != e.get("sha256") or size != e.get("size"):
        return f"{path}: checksum mismatch (image changed since the shutdown)"
    return None


def boot(config: str | None = None, only: list[str] | None = None,
         kinds: list[str] | None = None, image_dir: str | None = None) -> int:
    pol, bad = _policy_or_fallback(config, "restoring in the order the manifest recorded")
    mdir = image_dir or pol.image_dir
    kinds = set(kinds or ("lxc", "libvirt"))
    results = []
    with Manifest(mdir) as manifest:
        todo = [e for e in manifest.entries if e.get("state") == "pending"
                and e.get("kind") in kinds and (not only or e.get("name") in only)]
        if not todo:
            log("", "", f"boot: nothing to restore ({manifest.path})")
        jobs = [(e, _target_of(e, pol, bad is None)) for e in todo]
        jobs.sort(key=lambda j: (j[1].settings.order, j[1].kind, j[1].name))
        for order, group in itertools.groupby(jobs, key=lambda j: j[1].settings.order):
            with concurrent.futures.ThreadPoolExecutor(max_workers=pol.parallelism) as pool:
                futs = [pool.submit(_guarded, _boot_one, t, e, t, manifest) for e, t in group]
                results += [f.result() for f in futs]
    bad_ones = [r for r in results if r.get("state") in ("failed", "cold-started")]
    if results:
        n_r = sum(1 for r in results if r.get("state") == "restored")
        log("", "", f"boot: {len(results)} handled, {n_r} restored, "
            f"{len(bad_ones)} not restored as saved; manifest {manifest.path}")
    if bad is not None:
        return bad.exit_code          # its one error line was printed first
    if bad_ones:
        first = bad_ones[0]
        raise OperationFailed(f"host boot: {len(bad_ones)} of {len(results)} not restored "
                              f"({first['kind']} {first['name']}: {first.get('boot_error')})")
    return 0


def run(args) -> int:
    kw = {"config": args.config, "only": args.only, "kinds": args.kind and [args.kind],
          "image_dir": args.image_dir}
    if args.host_cmd == "shutdown":
        return shutdown(**kw)
    return boot(**kw)
