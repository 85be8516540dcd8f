"""LXC adapter: ``lxc-cr lxc checkpoint|restore`` and the ``lxc-checkpoint`` wrapper.

Checkpoint: find the container through python3-lxc, freeze its cgroup while every thread
is seized, dump the tree and its namespaces into DIR/IMAGE_NAME with the container's config
inside (and a copy as DIR/config), then leave it running or stop it.

Restore: LXC starts the container from its own config (rootfs, mounts, veth on its bridge,
cgroups, console and ttys), with one extra start-host hook given on the lxc-start command
line only (the config file is never changed).  The hook hands the init's host pid
(LXC_PID, not yet exec'd) to us over a unix socket; we PTRACE_SEIZE it with
PTRACE_O_TRACEEXEC, let the hook return, and take the init over when it stops at its exec,
before it runs one instruction of its own.  The recorded tree is then rebuilt inside.

Resume on a plain ``lxc-start``: with the hook registered in the container's config
(``lxc-cr hooks install``), a start with no restore waiting and a pending image (see
lxc_cr/pending.py) makes the hook spawn ``lxc-cr lxc resume NAME --takeover-pid LXC_PID``
(internal, detached); that process seizes the init the same way, tells the hook over a pipe,
and rebuilds the pending image inside.  Both entry points share ``_seize_init`` /
``_wait_exec`` / ``_rebuild``.  A resume that fails after the seize kills the container
(the init dies with its tracer at the latest, PTRACE_O_EXITKILL) and leaves the image
pending; the reason goes to /var/log/lxc-cr/lxc-NAME.log.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

from lxc_cr.errors import BadInput, OperationFailed, RestoreFailed, UnknownTarget

IMAGE_NAME = "lxc-cr.img"
RUN_DIR = "/run/lxc-cr"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOOK = os.path.join(REPO, "hooks", "lxc", "start-host")


def _lxc():
    try:
        import lxc
    except ImportError as e:
        raise OperationFailed(f"python3-lxc is not available: {e}") from None
    return lxc


def container(name: str, lxcpath: str | None = None):
    lxc = _lxc()
    c = lxc.Container(name, lxcpath) if lxcpath else lxc.Container(name)
    if not c.defined:
        raise UnknownTarget(f"{name}: no such container" +
                            (f" in {lxcpath}" if lxcpath else ""))
    return c


def init_pid(name: str, lxcpath: str | None = None) -> int:
    c = container(name, lxcpath)
    if not c.running or c.init_pid <= 0:
        raise OperationFailed(f"{name}: container is not running")
    return c.init_pid


def socket_path(name: str) -> str:
    return f"{RUN_DIR}/restore-{name}.sock"


def hook_registered(c) -> bool:
    """Is lxc-cr's start-host hook in the container's own config (``hooks install``)?"""
    try:
        hooks = c.get_config_item("lxc.hook.start-host") or []
    except KeyError:
        return False
    if isinstance(hooks, str):
        hooks = [hooks]
    real = os.path.realpath(HOOK)
    return any(os.path.realpath(h.split()[0]) == real for h in hooks if h.strip())


# --- checkpoint ---------------------------------------------------------------------------

def checkpoint(name: str, directory: str, stop: bool = False, lxcpath: str | None = None,
               verbose: bool = False, compress: str | None = None,
               key: bytes | None = None, tcp_established: bool = False) -> dict:
    """``key``: encrypt the image (image/envelope.py); ``tcp_established``: checkpoint
    established TCP connections (resources/tcp_established.py)."""
    from lxc_cr.locking import container_lock
    with container_lock("lxc", name, "checkpoint"):
        return _checkpoint(name, directory, stop, lxcpath, verbose, compress, key,
                           tcp_established)


def _checkpoint(name, directory, stop, lxcpath, verbose, compress, key=None,
                tcp_established=False) -> dict:
    from lxc_cr.resources import namespaces
    c = container(name, lxcpath)
    if not c.running:
        raise OperationFailed(f"{name}: container is not running")
    pid = c.init_pid
    # first: its helper imports pyroute2 on the other CPU while this process imports the dump
    with namespaces.net_reads(pid) as net:
        from lxc_cr.dump import dump_tree
        from lxc_cr.kernel.cgroup import Freezer
        from lxc_cr.runtime.records import SOURCE_CONFIG
        os.makedirs(directory, mode=0o700, exist_ok=True)
        with open(c.config_file_name) as f:
            config = f.read()
        image = os.path.join(directory, IMAGE_NAME)
        stats = dump_tree(pid, image, leave_running=not stop, compress=compress, key=key,
                          tcp_established=tcp_established, net=net,
                          source_kind="lxc", source_name=name, freezer=Freezer(pid),
                          extra_records=[(SOURCE_CONFIG, dict(kind="lxc", name=name,
                                                               lxcpath=c.get_config_path(),
                                                               config=config))])
    _copy_config(config, directory)
    from lxc_cr import pending
    if stop and key is None:     # an encrypted image needs its key: no resume on lxc-start
        pending.mark("lxc", name, directory, lxcpath)
    # With stop, every process of the container is dead by now (dump_tree collected their
    # exits).  LXC's monitor then deletes the veth and the cgroups and exits, 25-55 ms on
    # its own CPU.  This returns without waiting for that, as LXC's lxc-checkpoint -s does:
    # an LXC command meanwhile (lxc-info, lxc-start, a restore's check) waits on the
    # monitor's command socket until the monitor is gone, and gets STOPPED.
    if verbose:
        print(f"{name}: checkpointed to {image} ({stats['pages_written']} pages, "
              f"{stats['tasks']} processes)")
    return stats


def _copy_config(config: str, directory: str) -> None:
    tmp = os.path.join(directory, ".config.tmp")
    with open(tmp, "w") as f:
        f.write(config)
    os.chmod(tmp, 0o600)
    os.rename(tmp, os.path.join(directory, "config"))


# --- restore ------------------------------------------------------------------------------

def restore(name: str, directory: str, lxcpath: str | None = None, verbose: bool = False,
            key: bytes | None = None, max_privilege=None) -> dict:
    """``key``: of an encrypted image; ``max_privilege``: a privilege.Limit (restore_tree)."""
    from lxc_cr.locking import container_lock
    with container_lock("lxc", name, "restore"):
        return _restore(name, directory, lxcpath, verbose, key, max_privilege)


def _restore(name, directory, lxcpath, verbose, key=None, max_privilege=None) -> dict:
    from lxc_cr.intent import recover_target
    recover_target("lxc", name)       # a dump of it killed earlier
    c = container(name, lxcpath)
    if c.running:
        raise OperationFailed(f"{name}: container is running; stop it before restoring")
    image = _image_path(directory)
    os.makedirs(RUN_DIR, mode=0o700, exist_ok=True)
    path = socket_path(name)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    starter = {}
    seized = {}

    def takeover() -> int:
        seized["asked"] = True           # from here on, the hook is answered or dropped
        if "proc" not in starter:
            starter["proc"] = _start(c, name, lxcpath)
        tracee = _accept_init(listener, starter["proc"], name)
        seized["pid"] = tracee.tid
        return _wait_exec(tracee, name)

    try:
        # LXC starts the container while the image is being checked (50 ms of LXC's own
        # work that the checks no longer wait for).  Nothing of the container runs
        # meanwhile: its init waits in the start-host hook, before its exec, until we
        # answer, and a refused image is answered "no" (_turn_away): the hook fails and
        # LXC aborts the start.  Not for an encrypted image: authenticating all of it
        # first may take longer than the hook waits.
        if key is None:
            starter["proc"] = _start(c, name, lxcpath)
        stats = _rebuild(c, name, image, lxcpath, takeover, key=key,
                         max_privilege=max_privilege, seized=seized, accept=_lxc_header,
                         turn_away=lambda: _turn_away(listener, starter.get("proc"), name))
    finally:
        listener.close()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        if "proc" in starter:
            _reap_starter(starter["proc"])
    if verbose:
        print(f"{name}: restored from {image}, init pid {c.init_pid}")
    return stats


def _start(c, name: str, lxcpath: str | None):
    """``lxc-start -d`` of the container, with our start-host hook unless its config
    already has it (LXC would run it twice)."""
    cmd = ["lxc-start", "-n", name, "-d"]
    if not hook_registered(c):
        cmd += ["-s", f"lxc.hook.start-host={HOOK}"]
    if lxcpath:
        cmd[1:1] = ["-P", lxcpath]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def _turn_away(listener, starter, name: str) -> None:
    """The restore failed before it seized the init: answer the start-host hook "no" (it
    fails, and LXC aborts the start and kills the init before its exec) and wait for
    lxc-start to give up.  Not answering is no way out: a hook that finds no restore
    waiting resumes a pending image, or lets the container boot fresh."""
    if starter is None:
        return                           # not started
    try:
        conn = _accept_hook(listener, starter, name, timeout=30.0)
    except RestoreFailed:
        conn = None                      # lxc-start failed by itself, or never called us
    if conn is not None:
        with conn:
            try:
                conn.settimeout(10)
                conn.recv(64)
                conn.sendall(b"no\n")
            except OSError:
                pass
    _reap_starter(starter)


def _image_path(directory: str) -> str:
    image = os.path.join(directory, IMAGE_NAME)
    if not os.path.exists(image):
        raise UnknownTarget(f"{image}: no checkpoint image")
    return image


def _lxc_image(directory: str, key: bytes | None = None) -> str:
    from lxc_cr.image.reader import ImageReader
    image = _image_path(directory)
    with ImageReader(image, key=key) as r:
        _lxc_header(r.header, image)
    return image


def _lxc_header(header, image: str) -> None:
    if str(header.source_kind) != "lxc":
        raise UnknownTarget(f"{image}: not an LXC checkpoint (source {header.source_kind})")


def _rebuild(c, name: str, image: str, lxcpath: str | None, takeover, key=None,
             max_privilege=None, seized: dict | None = None, accept=None,
             turn_away=None) -> dict:
    """The one takeover path of both entry points: rebuild IMAGE into the init that
    ``takeover()`` returns (seized, stopped at the exit of its execve); on failure the
    container is stopped, so it is never left half-built.  Consumes the pending image.
    ``seized["pid"]``: the init once we trace it.  On failure it is killed and its exit
    collected by us first: a traced zombie is not reported to LXC's monitor until its
    tracer has waited for it, and the monitor would wait for ever (and lxc-stop with it).
    ``accept``: restore_tree's check of the image header.  ``turn_away``: how to abort a
    start whose init was not seized yet (the hook waits for our answer)."""
    from lxc_cr.restore import restore_tree
    try:
        stats = restore_tree(image, takeover=takeover, key=key, max_privilege=max_privilege,
                             accept=accept)
    except BaseException:
        if seized and seized.get("pid"):
            _kill_traced(seized["pid"])
        elif turn_away is not None and not (seized and seized.get("asked")):
            turn_away()
        _stop_quiet(c)
        raise
    if not c.wait("RUNNING", 30):
        raise RestoreFailed(f"{name}: restored, but LXC does not report RUNNING")
    from lxc_cr import pending
    pending.consume("lxc", name, lxcpath)
    return stats


def _accept_init(listener, proc, name: str, timeout: float = 60.0):
    """Wait for the start-host hook and seize the init it names (returns the Tracee)."""
    conn = _accept_hook(listener, proc, name, timeout)
    with conn:
        conn.settimeout(10)
        msg = conn.recv(64).decode().strip()
        try:
            pid = int(msg)
        except ValueError:
            raise RestoreFailed(f"{name}: bad message from the start-host hook: {msg!r}") from None
        tracee = _seize_init(pid)
        conn.sendall(b"ok\n")
    return tracee


def _accept_hook(listener, proc, name: str, timeout: float):
    """The start-host hook's connection, once LXC has run it."""
    listener.settimeout(0.2)
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn, _ = listener.accept()
            return conn
        except TimeoutError:
            if proc.poll() is not None and proc.returncode != 0:
                err = proc.stderr.read().decode(errors="replace").strip().splitlines()
                raise RestoreFailed(f"{name}: lxc-start failed: {err[-1] if err else proc.returncode}")
            if time.monotonic() > deadline:
                raise RestoreFailed(f"{name}: the container's start-host hook never called")


def _seize_init(pid: int):
    """PTRACE_SEIZE the manager's init (not yet exec'd) so it stops at its exec; it dies
    with us (EXITKILL) rather than running as a fresh boot."""
    from lxc_cr.kernel.ptrace import O_EXITKILL, O_TRACEEXEC, O_TRACESYSGOOD, Tracee
    return Tracee.seize(pid, O_TRACEEXEC | O_EXITKILL | O_TRACESYSGOOD)


def _wait_exec(tracee, name: str) -> int:
    """Let the seized init run to the exit of its execve; return its pid."""
    from lxc_cr.kernel.ptrace import EVENT_EXEC, PTRACE_CONT, PTRACE_SYSCALL
    while True:
        st = tracee.wait()
        if st.exited:
            raise RestoreFailed(f"{name}: the container's init exited before its exec")
        if st.event == EVENT_EXEC:
            # The exec stop is inside execve: let it return (syscall-exit stop), so the
            # registers we set for injected syscalls are not overwritten by its result.
            tracee._resume(PTRACE_SYSCALL)
            st = tracee.wait()
            if st.exited or st.sig != (signal.SIGTRAP | 0x80):
                raise RestoreFailed(f"{name}: init did not stop at the exit of its execve")
            return tracee.tid
        sig = st.sig if st.event == 0 and st.sig not in (signal.SIGTRAP, signal.SIGSTOP) else 0
        tracee._resume(PTRACE_CONT, sig)


# --- resume on a plain lxc-start (spawned by the start-host hook) -------------------------

def resume(name: str, init_pid: int, lxcpath: str | None = None,
           report_fd: int | None = None) -> dict | None:
    """``lxc-cr lxc resume NAME --takeover-pid PID``: the start-host hook found a pending
    image on a plain start.  Report to the hook (one line on REPORT_FD): ``fresh: WHY`` when
    the policy or the registry says boot fresh, ``seized`` once the init is seized (the
    hook then lets LXC go on), or ``error: WHY`` (the hook fails the start; nothing was
    touched, the image stays pending).  After ``seized``, a failure stops the container
    and leaves the image pending."""
    from lxc_cr import pending
    report = _Report(report_fd)
    try:
        why = _resume_refusal(name, lxcpath)
        if why:
            report.send(f"fresh: {why}")          # the hook logs it
            return None
        from lxc_cr.locking import container_lock
        with container_lock("lxc", name, "resume"):
            record = pending.lookup("lxc", name, lxcpath)
            image = _lxc_image(record["image"]) if record else None
            if image is None:
                report.send("fresh: no pending image")
                return None
            c = container(name, lxcpath)
            tracee = _seize_init(init_pid)
            report.send("seized")
            print(f"{name}: resuming {image} into init pid {init_pid}", flush=True)
            stats = _rebuild(c, name, image, lxcpath, lambda: _wait_exec(tracee, name),
                             seized={"pid": init_pid})
            print(f"{name}: resumed {image}, init pid {init_pid}, {stats['tasks']} "
                  "processes", flush=True)
            return stats
    except BaseException as e:
        report.send(f"error: {e}")
        if report.said_seized:
            print(f"{name}: resume failed, container stopped, image left pending", flush=True)
        raise
    finally:
        report.close()


def _resume_refusal(name: str, lxcpath: str | None) -> str | None:
    """Why a plain start should boot fresh (policy, stale record), or None to resume."""
    from lxc_cr import pending, policy
    try:
        settings = policy.load().lxc(name)
    except BadInput as e:
        return f"policy unreadable, not resuming: {e}"
    if not settings.resume_on_start:
        return "policy resume_on_start is false (the image stays pending)"
    record = pending.lookup("lxc", name, lxcpath)
    if record is None:
        return "no pending image"
    if not os.path.exists(os.path.join(record["image"], IMAGE_NAME)):
        pending.consume("lxc", name, lxcpath)
        return f"pending image {record['image']} is gone (record dropped)"
    return None


class _Report:
    """The one-line verdict to the start-host hook over an inherited pipe."""

    def __init__(self, fd: int | None):
        self.fd = fd
        self.said_seized = False

    def send(self, line: str) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, (line.splitlines()[0] if line else "").encode() + b"\n")
        except OSError:
            pass
        self.said_seized = line == "seized"
        self.close()

    def close(self) -> None:
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None


def _reap_starter(proc) -> None:
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _kill_traced(pid: int) -> None:
    from lxc_cr.kernel.ptrace import reap
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    reap([pid])


def _stop_quiet(c) -> None:
    try:
        if c.running:
            c.stop()
            c.wait("STOPPED", 10)
    except Exception:
        pass


# --- the lxc-checkpoint wrapper ----------------------------------------------------------

def _security(args, key_option: str) -> dict:
    from lxc_cr.privilege import security_options
    return security_options(args, key_option)


def lxc_checkpoint(args) -> int:
    """``lxc-checkpoint -n NAME -D DIR [-s] [-r] [-v] [-d|-F] [-P LXCPATH]``, LXC's semantics:
    dump leaves the container running unless -s; -r restores; a dump refuses a stopped
    container and a restore a running one."""
    if args.restore:
        if args.stop:
            raise OperationFailed("-s makes no sense with -r")
        restore(args.name, args.checkpoint_dir, lxcpath=args.lxcpath, verbose=args.verbose,
                **_security(args, "encrypt"))
    else:
        if getattr(args, "max_privilege", None):
            raise OperationFailed("--max-privilege is for a restore (-r)")
        checkpoint(args.name, args.checkpoint_dir, stop=args.stop, lxcpath=args.lxcpath,
                   verbose=args.verbose, key=_security(args, "encrypt")["key"])
    return 0


def run(args) -> int:
    """``lxc-cr lxc checkpoint|restore``."""
    if args.lxc_cmd == "checkpoint":
        checkpoint(args.name, args.dir, stop=args.stop, lxcpath=args.lxcpath,
                   verbose=args.verbose, compress=getattr(args, "compress", None),
                   key=_security(args, "encrypt")["key"],
                   tcp_established=getattr(args, "tcp_established", False))
        return 0
    if args.lxc_cmd == "restore":
        restore(args.name, args.dir, lxcpath=args.lxcpath, verbose=args.verbose,
                **_security(args, "key"))
        return 0
    if args.lxc_cmd == "resume":
        resume(args.name, args.takeover_pid, lxcpath=args.lxcpath, report_fd=args.report_fd)
        return 0
    raise OperationFailed(f"unknown lxc action {args.lxc_cmd}")


def has_image(directory: str) -> bool:
    return os.path.exists(os.path.join(directory, IMAGE_NAME))


def remove_image(directory: str) -> None:
    import shutil
    shutil.rmtree(directory, ignore_errors=True)
