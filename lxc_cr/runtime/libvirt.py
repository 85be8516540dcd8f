"""libvirt adapter (LXC domains): virsh-style save, restore and managed save.

Save: find the domain's init from libvirt's status file (/run/libvirt/lxc/NAME.xml,
``<init pid='N'/>``), freeze its cgroup while seizing, dump the tree with the domain XML
inside the image; the dump kills the init, so libvirt sees the domain shut off.

Restore: libvirt starts the domain itself (controller, cgroups, veth, console), from the
XML stored in the image but with a restore shim as ``<init>``: ``/bin/sleep`` with a huge
argument, present in host-root and busybox roots alike.  We seize that init while it
sleeps and turn it into the recorded init; the domain is then an ordinary running libvirt
domain (``virsh list``, ``destroy``, ``suspend``, ``console``).  A persistent domain keeps
its own definition: the shim exists only in the live definition of this one run.
"""

from __future__ import annotations

import os
import re
import time
import xml.etree.ElementTree as ET

from lxc_cr.errors import BadInput, OperationFailed, RestoreFailed, UnknownTarget

DEFAULT_URI = "lxc:///system"
STATUS_DIR = "/run/libvirt/lxc"
MANAGED_DIR = "/var/lib/lxc-cr/libvirt"
RUN_DIR = "/run/lxc-cr"
SHIM = ("/bin/sleep", "2147483647")


class VirshError(OperationFailed):
    """Errors worded as virsh words them (``error: failed to get domain 'x'``)."""


class VirshBadInput(BadInput):
    pass


def _libvirt():
    try:
        import libvirt
    except ImportError as e:
        raise OperationFailed(f"python3-libvirt is not available: {e}") from None
    libvirt.registerErrorHandler(lambda ctx, err: None, None)   # no stderr noise
    return libvirt


def connect(uri: str | None = None):
    libvirt = _libvirt()
    try:
        return libvirt.open(uri or DEFAULT_URI)
    except libvirt.libvirtError as e:
        raise OperationFailed(f"failed to connect to the hypervisor: {e}") from None


def lookup(conn, name: str):
    libvirt = _libvirt()
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError:
        raise UnknownTarget(f"failed to get domain '{name}'") from None


def init_pid(name: str, uri: str | None = None) -> int:
    dom = lookup(connect(uri), name)
    if not dom.isActive():
        raise VirshError(f"Requested operation is not valid: domain '{name}' is not running")
    return _status_init_pid(name, timeout=10)


def _status_init_pid(name: str, timeout: float = 0.0) -> int:
    """The init's host pid from libvirt's status file, once it names a live init whose
    parent is the domain's controller (the file can still hold a previous run's pids)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(f"{STATUS_DIR}/{name}.xml") as f:
                text = f.read()
        except FileNotFoundError:
            text = ""
        ctrl = re.search(r"<domstatus [^>]*pid='(\d+)'", text)
        init = re.search(r"<init pid='(\d+)'", text)
        if ctrl and init and int(init.group(1)) > 0 and \
                _ppid(int(init.group(1))) == int(ctrl.group(1)):
            return int(init.group(1))
        if time.monotonic() >= deadline:
            pid = _controller_init(name, int(ctrl.group(1))) if ctrl else None
            if pid is not None:
                return pid
            said = f"init pid='{init.group(1)}'" if init else "no init pid"
            raise OperationFailed(f"domain '{name}': no live init pid in {STATUS_DIR}/{name}.xml "
                                  f"({said}, and no controller with one init child)")
        time.sleep(0.005)


def _controller_init(name: str, ctrl: int) -> int | None:
    """The init of domain ``name`` as its controller sees it, for when the status file keeps
    ``<init pid='0'/>`` (libvirtd learns the pid only from an event of the controller's
    monitor, written asynchronously, and never again if it missed it).

    Only a proven answer: ``ctrl`` must be ``libvirt_lxc --name NAME`` (not a reused pid),
    and the init is its one child that is pid 1 of another pid namespace (the container
    libvirt_lxc cloned).  Otherwise None, and the caller refuses."""
    from lxc_cr.kernel.procfs import Proc
    proc = Proc()
    try:
        argv = proc.read(ctrl, "cmdline").split(b"\0")
        own_ns = proc.ns(ctrl, "pid")
        kids = proc.children(ctrl)
    except OperationFailed:                 # TaskGone too
        return None
    if os.path.basename(argv[0]) != b"libvirt_lxc" or \
            not any(a == b"--name" and b == name.encode() for a, b in zip(argv, argv[1:])):
        return None
    found = []
    for k in kids:
        try:
            nspid = proc.status(k).get("NSpid", "").split()
            if len(nspid) > 1 and nspid[-1] == "1" and proc.ns(k, "pid") != own_ns:
                found.append(k)
        except OperationFailed:
            pass
    return found[0] if len(found) == 1 and _ppid(found[0]) == ctrl else None


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def managed_path(name: str) -> str:
    return f"{MANAGED_DIR}/{name}.save"


# --- save ---------------------------------------------------------------------------------

def save(name: str, path: str, uri: str | None = None, verbose: bool = False,
         after: str | None = None, key: bytes | None = None,
         tcp_established: bool = False) -> dict:
    """``after``: "running" or "paused", recorded for a later restore (virsh save
    --running/--paused); None leaves the choice to the restore.  ``key``: encrypt."""
    from lxc_cr.locking import container_lock
    with container_lock("libvirt", name, "save"):
        return _save(name, path, uri, verbose, after, key, tcp_established)


def _save(name, path, uri, verbose, after, key=None, tcp_established=False) -> dict:
    from lxc_cr.resources import namespaces
    conn = connect(uri)
    dom = lookup(conn, name)
    if not dom.isActive():
        raise VirshError(f"Requested operation is not valid: domain '{name}' is not running")
    pid = _status_init_pid(name, timeout=10)   # libvirt fills it in just after a start
    # first: its helper imports pyroute2 on the other CPU while this process imports the dump
    with namespaces.net_reads(pid) as net:
        from lxc_cr.dump import dump_tree
        from lxc_cr.kernel.cgroup import Freezer
        from lxc_cr.runtime.records import RESTORE_STATE, SOURCE_CONFIG
        extra = [(RESTORE_STATE, dict(state=after))] if after else []
        xml = dom.XMLDesc(0)
        progress = _progress_printer() if verbose else None
        stats = dump_tree(pid, path, leave_running=False, source_kind="libvirt", key=key,
                          tcp_established=tcp_established, net=net,
                          source_name=name, freezer=Freezer(pid), progress=progress,
                          extra_records=[(SOURCE_CONFIG, dict(kind="libvirt", name=name,
                                                               lxcpath=uri or DEFAULT_URI,
                                                               config=xml))] + extra)
    if progress:
        progress(1, 1)
        print()
    _wait_inactive(dom, name)
    return stats


def _progress_printer():
    last = [-1]

    def show(done: int, total: int) -> None:
        pct = int(100 * done / total) if total else 100
        if pct != last[0]:
            last[0] = pct
            print(f"\rSave: [{pct:3d} %]", end="", flush=True)
    return show


def _wait_inactive(dom, name: str, timeout: float = 30.0, notice: float = 10.0) -> None:
    """Until libvirt sees the domain shut off (a transient domain disappears instead).

    libvirtd learns that a domain ended from an event of its controller's monitor.  Its
    monitor connection is sometimes lost right at the start (the controller's log says
    "End of file while reading data" at start-up and later "Dropping event ... because
    libvirtd is not connected": 31 of 347 domain starts in this project's test logs), and
    then libvirtd never notices.  The dump has killed the whole tree by now, so after
    ``notice`` seconds the domain is destroyed through libvirt, which only cleans up."""
    libvirt = _libvirt()
    start = time.monotonic()
    destroyed = False
    while True:
        try:
            if not dom.isActive():
                return
        except libvirt.libvirtError:
            return                                  # transient: gone once it stopped
        if not destroyed and time.monotonic() > start + notice:
            destroyed = True
            try:
                dom.destroy()
            except libvirt.libvirtError:
                pass                                # it may have ended meanwhile: look again
            continue
        if time.monotonic() > start + timeout:
            raise VirshError(f"domain '{name}' was saved but is still running")
        time.sleep(0.01)


# --- restore ------------------------------------------------------------------------------

def image_xml(path: str, key: bytes | None = None) -> tuple[str, str]:
    """(domain name, domain XML) stored in a libvirt image."""
    from lxc_cr.image.reader import ImageReader
    with ImageReader(path, key=key) as r:
        if str(r.header.source_kind) != "libvirt":
            raise VirshBadInput(f"{path}: not a libvirt domain save image "
                                f"(source {r.header.source_kind})")
        for _, obj in r.records("source_config"):
            return obj.name, obj.config
    raise VirshBadInput(f"{path}: the image holds no domain XML")


def _shim_xml(xml: str) -> str:
    root = ET.fromstring(xml)
    os_el = root.find("os")
    if os_el is None:
        raise VirshBadInput("domain XML has no <os> element")
    for el in list(os_el):
        if el.tag in ("init", "initarg"):
            os_el.remove(el)
    init = ET.SubElement(os_el, "init")
    init.text = SHIM[0]
    arg = ET.SubElement(os_el, "initarg")
    arg.text = SHIM[1]
    return ET.tostring(root, encoding="unicode")


def saved_state(path: str, key: bytes | None = None) -> str | None:
    from lxc_cr.image.reader import ImageReader
    with ImageReader(path, key=key) as r:
        for _, obj in r.records("restore_state"):
            return obj.state
    return None


def restore(path: str, uri: str | None = None, paused: bool = False,
            running: bool = False, key: bytes | None = None, max_privilege=None) -> dict:
    """``paused``/``running`` override the state recorded by ``save --paused/--running``.
    ``key``: of an encrypted image; ``max_privilege``: a privilege.Limit (restore_tree)."""
    from lxc_cr.image.reader import ImageReader
    from lxc_cr.locking import container_lock
    if not os.path.exists(path):
        raise VirshBadInput(f"{path}: No such file or directory")
    with ImageReader(path, key=key) as r:
        r.verify()
    name, xml = image_xml(path, key)
    with container_lock("libvirt", name, "restore"):
        return _restore(path, uri, paused, running, name, xml, key, max_privilege)


def _restore(path, uri, paused, running, name, xml, key=None, max_privilege=None) -> dict:
    from lxc_cr.intent import recover_target
    from lxc_cr.kernel.ptrace import O_EXITKILL, Tracee
    from lxc_cr.restore import restore_tree
    recover_target("libvirt", name)   # a save of it killed earlier
    libvirt = _libvirt()
    conn = connect(uri)
    try:
        dom = conn.lookupByName(name)
        if dom.isActive():
            raise VirshError(f"Requested operation is not valid: domain '{name}' is "
                             f"already active")
    except libvirt.libvirtError:
        pass
    os.makedirs(RUN_DIR, mode=0o700, exist_ok=True)
    marker = f"{RUN_DIR}/restoring-{name}"
    started = {}

    def takeover() -> int:
        open(marker, "w").close()
        try:
            started["dom"] = conn.createXML(_shim_xml(xml), 0)
        except libvirt.libvirtError as e:
            raise RestoreFailed(f"failed to start domain '{name}': {e}") from None
        finally:
            os.unlink(marker)
        pid = _status_init_pid(name, timeout=30)
        _wait_exe(pid, SHIM[0])
        t = Tracee.seize(pid, O_EXITKILL)
        t.interrupt()
        return pid

    try:
        stats = restore_tree(path, takeover=takeover, key=key, max_privilege=max_privilege)
    except BaseException:
        d = started.get("dom")
        if d is not None:
            try:
                d.destroy()
            except libvirt.libvirtError:
                pass
        raise
    dom = started["dom"]
    if paused or (not running and saved_state(path, key) == "paused"):
        dom.suspend()
    return stats


def _wait_exe(pid: int, exe: str, timeout: float = 30.0) -> None:
    """The domain's init is ours to take once it runs the shim (libvirt's container child
    execs it after its set-up handshake)."""
    real = os.path.realpath(exe)
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            got = ""
        if got == real or os.path.basename(got) == os.path.basename(real) or \
                got.endswith("/busybox"):
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "S":
                    return
        if time.monotonic() > deadline:
            raise RestoreFailed(f"pid {pid}: the restore shim {exe} did not start")
        time.sleep(0.002)


# --- managed save -------------------------------------------------------------------------

def managedsave(name: str, uri: str | None = None, verbose: bool = False) -> dict:
    os.makedirs(MANAGED_DIR, mode=0o700, exist_ok=True)
    os.chmod(MANAGED_DIR, 0o700)
    return save(name, managed_path(name), uri=uri, verbose=verbose)


def has_managed_save(name: str) -> bool:
    return os.path.exists(managed_path(name))


def start(name: str, uri: str | None = None, force_boot: bool = False) -> str:
    """Resume the managed save if there is one (then remove it), else boot normally."""
    libvirt = _libvirt()
    conn = connect(uri)
    dom = lookup(conn, name)
    if dom.isActive():
        raise VirshError("Requested operation is not valid: domain is already running")
    path = managed_path(name)
    if os.path.exists(path) and not force_boot:
        restore(path, uri=uri)
        os.unlink(path)
        return "restored"
    if os.path.exists(path):               # --force-boot discards the managed save
        os.unlink(path)
    try:
        dom.create()
    except libvirt.libvirtError as e:
        raise VirshError(f"Failed to start domain '{name}': {e}") from None
    return "booted"


def managedsave_remove(name: str, uri: str | None = None) -> bool:
    lookup(connect(uri), name)
    try:
        os.unlink(managed_path(name))
        return True
    except FileNotFoundError:
        return False


def run(args) -> int:
    """``lxc-cr virsh ...`` with virsh's output."""
    from lxc_cr.privilege import security_options
    uri = getattr(args, "connect", None)
    cmd = args.virsh_cmd
    if cmd == "save":
        after = "paused" if args.paused else "running" if args.running else None
        save(args.domain, args.file, uri=uri, verbose=args.verbose, after=after,
             key=security_options(args, "encrypt")["key"],
             tcp_established=getattr(args, "tcp_established", False))
        print(f"\nDomain '{args.domain}' saved to {args.file}\n")
    elif cmd == "restore":
        restore(args.file, uri=uri, paused=args.paused, running=args.running,
                **security_options(args, "key"))
        print(f"Domain restored from {args.file}\n")
    elif cmd == "managedsave":
        managedsave(args.domain, uri=uri, verbose=args.verbose)
        print(f"\nDomain '{args.domain}' state saved by libvirt\n")
    elif cmd == "start":
        start(args.domain, uri=uri, force_boot=args.force_boot)
        print(f"Domain '{args.domain}' started\n")
    elif cmd == "managedsave-remove":
        if managedsave_remove(args.domain, uri=uri):
            print(f"Removed managedsave image for domain '{args.domain}'")
        else:
            print(f"Domain '{args.domain}' has no manage save image; removal skipped")
    elif cmd == "save-image-dumpxml":
        _, xml = image_xml(args.file, security_options(args, "key")["key"])
        print(xml)
    elif cmd == "dominfo":
        dom = lookup(connect(uri), args.domain)
        state = "running" if dom.isActive() else "shut off"
        print(f"Name:           {args.domain}\nState:          {state}\n"
              f"Managed save:   {'yes' if has_managed_save(args.domain) else 'no'}")
    return 0
