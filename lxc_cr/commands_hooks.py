"""``lxc-cr hooks install|uninstall|status``: what lxc-cr registers with its managers.

* libvirt: ``/etc/libvirt/hooks/lxc.d/lxc-cr`` (from hooks/libvirt/lxc-cr) refuses a plain
  ``virsh start`` of a domain that has an lxc-cr managed save, saying how to resume or
  discard it.  libvirtd reads lxc.d/ when it starts: restart libvirtd after installing.
* LXC: the start-host hook (hooks/lxc/start-host) is registered in each container's own
  config as one ``lxc.hook.start-host`` line between two marker comments, appended at the
  end (LXC has no global config that every container reads, and the busybox template's
  config includes nothing).  With it a plain ``lxc-start`` resumes a pending image
  (lxc_cr/pending.py) when the policy's ``resume_on_start`` is true.  ``uninstall`` removes
  exactly those lines, leaving the config byte for byte as it was.  ``--container NAME``
  limits install/uninstall to those containers (and leaves the other hooks alone).  A
  restore of an unregistered container passes the hook on the lxc-start command line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBVIRT_HOOK_DIR = "/etc/libvirt/hooks/lxc.d"
INSTALLS = [
    # (what, source in the repo, installed path)
    ("libvirt lxc hook", os.path.join(REPO, "hooks", "libvirt", "lxc-cr"),
     os.path.join(LIBVIRT_HOOK_DIR, "lxc-cr")),
    # lxc-cr host shutdown/boot around a reboot (@LXC_CR@ becomes lxc-cr's absolute path)
    ("systemd unit", os.path.join(REPO, "hooks", "systemd", "lxc-cr-host.service"),
     "/etc/systemd/system/lxc-cr-host.service"),
    ("systemd lxc.service drop-in", os.path.join(REPO, "hooks", "systemd", "lxc.service.d",
                                                 "lxc-cr.conf"),
     "/etc/systemd/system/lxc.service.d/lxc-cr.conf"),
]
SYSTEMD_UNIT = "lxc-cr-host.service"


def lxc_cr_path() -> str:
    """The lxc-cr console script of this installation (the venv's, for ``pip install -e``)."""
    here = os.path.join(os.path.dirname(sys.executable), "lxc-cr")
    if os.access(here, os.X_OK):
        return os.path.abspath(here)
    return shutil.which("lxc-cr") or "/usr/local/bin/lxc-cr"


def render(src: str) -> bytes:
    """SRC as installed: systemd units get the absolute path of lxc-cr."""
    with open(src, "rb") as f:
        data = f.read()
    return data.replace(b"@LXC_CR@", lxc_cr_path().encode())


def _state(src: str, dst: str) -> str:
    if not os.path.exists(dst):
        return "not installed"
    with open(dst, "rb") as f:
        same = f.read() == render(src)
    return "installed" if same else "installed (differs)"


def _systemd_running() -> bool:
    return os.path.isdir("/run/systemd/system")


# --- the LXC start-host hook in container configs ------------------------------------------

LXC_HOOK = os.path.join(REPO, "hooks", "lxc", "start-host")
MARK_BEGIN = "# lxc-cr begin: added by `lxc-cr hooks install`, removed by `lxc-cr hooks uninstall`"
MARK_EOL = " (newline added)"
MARK_END = "# lxc-cr end"


def _lxcpath(lxcpath: str | None) -> str:
    if lxcpath:
        return lxcpath
    try:
        import lxc
        return lxc.default_config_path
    except ImportError:
        return "/var/lib/lxc"


def _container_configs(names: list[str] | None, lxcpath: str | None) -> list[tuple[str, str]]:
    """(name, config path) of the named containers, or of every container in LXCPATH."""
    from lxc_cr.errors import UnknownTarget
    base = _lxcpath(lxcpath)
    if names is None:
        try:
            names = sorted(n for n in os.listdir(base)
                           if os.path.isfile(os.path.join(base, n, "config")))
        except FileNotFoundError:
            names = []
    out = []
    for n in names:
        cfg = os.path.join(base, n, "config")
        if not os.path.isfile(cfg):
            raise UnknownTarget(f"{n}: no such container in {base}")
        out.append((n, cfg))
    return out


def _hook_block(text: str) -> str:
    eol = "" if not text or text.endswith("\n") else "\n"
    return (f"{eol}{MARK_BEGIN}{MARK_EOL if eol else ''}\n"
            f"lxc.hook.start-host = {LXC_HOOK}\n{MARK_END}\n")


def _strip_hook_block(text: str) -> str | None:
    """TEXT without lxc-cr's block, or None if it has none."""
    start = text.find(MARK_BEGIN)
    if start < 0:
        return None
    end = text.find(MARK_END + "\n", start)
    end = len(text) if end < 0 else end + len(MARK_END) + 1
    line_end = text.find("\n", start)
    if text[start:line_end].endswith(MARK_EOL) and start > 0 and text[start - 1] == "\n":
        start -= 1
    return text[:start] + text[end:]


def _rewrite(path: str, text: str) -> None:
    st = os.stat(path)
    tmp = path + ".lxc-cr-tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, st.st_mode & 0o7777)
    os.chown(tmp, st.st_uid, st.st_gid)
    os.rename(tmp, path)


def _each_config(names, lxcpath, change) -> list[str]:
    """Apply ``change(name, cfg, text) -> (new text or None, message)`` to each container's
    config; a container destroyed meanwhile is reported, not an error."""
    out = []
    for name, cfg in _container_configs(names, lxcpath):
        try:
            with open(cfg) as f:
                text = f.read()
            new, msg = change(name, cfg, text)
            if new is not None:
                _rewrite(cfg, new)
        except FileNotFoundError:
            msg = "container removed meanwhile"
        out.append(f"lxc start-host hook: {name}: {msg}")
    return out


def register_lxc(names: list[str] | None = None, lxcpath: str | None = None) -> list[str]:
    def change(name, cfg, text):
        if _strip_hook_block(text) is not None:
            return None, f"already registered ({cfg})"
        return text + _hook_block(text), f"registered ({cfg})"
    return _each_config(names, lxcpath, change)


def unregister_lxc(names: list[str] | None = None, lxcpath: str | None = None) -> list[str]:
    def change(name, cfg, text):
        stripped = _strip_hook_block(text)
        if stripped is None:
            return None, "not registered"
        return stripped, f"removed ({cfg})"
    return _each_config(names, lxcpath, change)


def status_lxc(lxcpath: str | None = None) -> list[str]:
    from lxc_cr import pending
    out = _each_config(None, lxcpath, lambda name, cfg, text: (
        None, "registered" if _strip_hook_block(text) is not None else "not registered"))
    records = pending.all()
    for r in records:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.get("created") or 0))
        where = f" (lxcpath {r['lxcpath']})" if r.get("lxcpath") else ""
        gone = "" if os.path.exists(r["image"]) else ", image missing"
        out.append(f"pending image: {r.get('kind')} {r.get('name')}{where}: {r['image']} "
                   f"(since {when}{gone})")
    if not records:
        out.append(f"pending images: none ({pending.pending_dir()})")
    return out


def install(containers: list[str] | None = None, lxcpath: str | None = None) -> list[str]:
    if containers is not None:
        return register_lxc(containers, lxcpath)
    out = []
    for what, src, dst in INSTALLS:
        os.makedirs(os.path.dirname(dst), mode=0o755, exist_ok=True)
        tmp = dst + ".lxc-cr-tmp"
        with open(tmp, "wb") as f:
            f.write(render(src))
        os.chmod(tmp, 0o644 if dst.endswith((".service", ".conf")) else 0o755)   # units: not executable
        os.rename(tmp, dst)
        out.append(f"{what}: installed {dst}")
    out.append("libvirt reads its hooks when libvirtd starts: restart libvirtd to enable it")
    out += _enable_systemd_unit()
    return out + register_lxc(None, lxcpath)


def _enable_systemd_unit() -> list[str]:
    """Enable and start the unit (its ExecStop runs at shutdown only if it is active)."""
    hint = f"systemctl daemon-reload && systemctl enable --now {SYSTEMD_UNIT}"
    if not _systemd_running():
        return [f"systemd unit: systemd is not running here; on a systemd host run: {hint}"]
    for argv in (["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", SYSTEMD_UNIT]):
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=120, check=False)
        if r.returncode != 0:
            return [f"systemd unit: {' '.join(argv)} failed: {r.stderr.strip()}; run: {hint}"]
    return [f"systemd unit: {SYSTEMD_UNIT} enabled and active"]


def uninstall(containers: list[str] | None = None, lxcpath: str | None = None) -> list[str]:
    if containers is not None:
        return unregister_lxc(containers, lxcpath)
    out = unregister_lxc(None, lxcpath)
    if _systemd_running() and os.path.exists(f"/etc/systemd/system/{SYSTEMD_UNIT}"):
        # disabled, not stopped: stopping would run `lxc-cr host shutdown` now
        subprocess.run(["systemctl", "disable", SYSTEMD_UNIT], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=120, check=False)
    for what, _src, dst in INSTALLS:
        try:
            os.unlink(dst)
            out.append(f"{what}: removed {dst}")
        except FileNotFoundError:
            out.append(f"{what}: not installed")
    return out


def status(containers: list[str] | None = None, lxcpath: str | None = None) -> list[str]:
    lines = [f"{what}: {_state(src, dst)} ({dst})" for what, src, dst in INSTALLS]
    return lines + status_lxc(lxcpath)


def run(args) -> int:
    action = {"install": install, "uninstall": uninstall, "status": status}[args.hooks_cmd]
    lines = action(getattr(args, "container", None), getattr(args, "lxcpath", None))
    for line in lines:
        print(line)
    return 0
