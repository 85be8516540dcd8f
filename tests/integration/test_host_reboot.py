"""``lxc-cr host shutdown`` / ``host boot`` around a simulated host reboot, on real busybox
LXC containers and a real libvirt LXC domain; and the systemd units that run them."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from glob import glob
from pathlib import Path

import pytest
from test_libvirt_save import counter_domain, virsh
from test_libvirt_save import state as dom_state
from test_lxc_checkpoint import RCS, URING, counter, rootfs, wait_for
from treeutil import sha256_file

REPO = Path(__file__).resolve().parents[2]
LXC_CR = REPO / ".venv" / "bin" / "lxc-cr"
BOOT_MARK = "echo boot >> /tmp/boots\n"
# busybox init runs ::shutdown: actions on its halt signal (lxc-stop), never on a kill
CLEAN_MARK = "::shutdown:/bin/sh -c 'echo clean >> /tmp/shutdowns'\n"
LINE = re.compile(r"^lxc-cr host: (lxc|libvirt) (\S+): (.*)$")


def host(cmd: str, *args, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(LXC_CR), "host", cmd, *map(str, args)], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=timeout, check=False,
                          env={**os.environ, **env})


def per_container(stderr: str) -> dict[str, str]:
    """{name: its one log line's text}; fails if a container has two lines."""
    out: dict[str, str] = {}
    for line in stderr.splitlines():
        m = LINE.match(line)
        if m:
            assert m.group(2) not in out, f"two lines for {m.group(2)}:\n{stderr}"
            out[m.group(2)] = m.group(3)
    return out


def busybox(lxc_container, label: str, extra_rcs: str = "", start: bool = True):
    """A busybox container with the counter loop, a boot marker and a clean-shutdown marker."""
    ct = lxc_container(label)
    (rootfs(ct) / "etc" / "init.d" / "rcS").write_text(RCS + BOOT_MARK + extra_rcs)
    with open(rootfs(ct) / "etc" / "inittab", "a") as f:
        f.write(CLEAN_MARK)
    if start:
        ct.start()
        wait_for(lambda: counter(ct) >= 3, what=f"{label}'s counter")
    return ct


def lines_of(ct, name: str) -> int:
    p = rootfs(ct) / "tmp" / name
    return len(p.read_text().splitlines()) if p.exists() else 0


def managed_save(name: str) -> Path:
    return Path("/var/lib/lxc-cr/libvirt") / f"{name}.save"


def simulate_reboot(cts, dom_name: str) -> None:
    """What a reboot clears, for these containers and this domain only: leftover processes
    (LXC monitors, the libvirt controller), libvirtd itself, and their /run state."""
    names = [ct.name for ct in cts] + [dom_name]
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(n in cmd for n in names):
            try:
                os.kill(int(d.name), signal.SIGKILL)
            except ProcessLookupError:
                pass
    for n in names:
        for path in (glob(f"/run/lxc-cr/*{n}*") + glob(f"/run/lxc-cr/lock/*{n}*")
                     + glob(f"/run/lxc/lock/**/{n}", recursive=True)
                     + glob(f"/run/libvirt/lxc/{n}.*")):
            p = Path(path)
            if p.is_dir() and not p.is_symlink():
                subprocess.run(["rm", "-rf", "--one-file-system", path], check=False)
            else:
                p.unlink(missing_ok=True)
    r = subprocess.run([str(REPO / "integration" / "env-up.sh"), "--restart-libvirtd"],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600,
                       check=False)
    assert r.returncode == 0, r.stderr


def test_host_shutdown_and_boot(lxc_container, libvirt_domain, cc, tmp_path):
    binary = cc(URING, name="uring")
    a = busybox(lxc_container, "hr-a")
    b = busybox(lxc_container, "hr-b")
    s = busybox(lxc_container, "hr-shut")
    u = busybox(lxc_container, "hr-uring", "/bin/uring </dev/null >/dev/null 2>&1 &\n",
                start=False)
    target = rootfs(u) / "bin" / "uring"
    target.write_bytes(binary.read_bytes())
    target.chmod(0o755)
    u.start()
    uring = rootfs(u) / "tmp" / "uring"
    wait_for(lambda: uring.exists() and uring.read_text().strip(), what="the io_uring holder")
    dom, dcount = counter_domain(libvirt_domain, tmp_path, "hr-dom")
    d = dom.name()
    images = tmp_path / "images"
    config = tmp_path / "config.yaml"
    config.write_text(f"""\
scope: listed            # other tests' containers run at the same time: only these
parallelism: 2
defaults: {{action: checkpoint, image_dir: {images}, timeout: 120}}
containers:
  {a.name}: {{order: 2}}
  {b.name}: {{order: 1, compress: true}}
  {s.name}: {{action: shutdown, timeout: 60}}
  {u.name}: {{start_at_boot: false, timeout: 60}}
domains:
  {d}: {{order: 0}}
""")
    env = {"LXC_CR_CONFIG": str(config), "LXC_CR_STATE_DIR": str(tmp_path / "state")}
    try:
        _shutdown_and_boot(a, b, s, u, d, dcount, images, env)
    finally:
        managed_save(d).unlink(missing_ok=True)
        # the fixture's connection predates the libvirtd restart: end the domain here
        virsh("destroy", d)
        virsh("undefine", d)


def _shutdown_and_boot(a, b, s, u, d, dcount, images, env):
    # --- host shutdown --------------------------------------------------------------------
    pre = {ct.name: counter(ct) for ct in (a, b)}
    pre_dom = dcount()
    r = host("shutdown", env=env)
    lines = per_container(r.stderr)
    assert r.returncode == 1, r.stderr           # one container could not be checkpointed
    err = [x for x in r.stderr.splitlines() if x.startswith("lxc-cr: error:")]
    assert len(err) == 1 and f"lxc {u.name}: preflight: pid" in err[0], r.stderr
    assert set(lines) == {a.name, b.name, s.name, u.name, d}, r.stderr
    for ct in (a, b):
        assert re.fullmatch(rf"checkpointed in \d+\.\d\d s \({images}/lxc/{ct.name}/lxc-cr\.img\)",
                            lines[ct.name]), lines[ct.name]
    assert re.fullmatch(rf"checkpointed in \d+\.\d\d s \({managed_save(d)}\)", lines[d]), lines[d]
    assert re.fullmatch(r"shut down cleanly in \d+\.\d\d s \(policy: shutdown\)",
                        lines[s.name]), lines[s.name]
    assert re.fullmatch(r"checkpoint failed: preflight: pid \d+ \(uring\) fd \d+: io_uring "
                        r"instance: not supported; shut down cleanly in \d+\.\d\d s",
                        lines[u.name]), lines[u.name]
    for ct in (a, b, s, u):
        assert ct.state() == "STOPPED", ct.name
    assert dom_state(d) == "shut off"
    # the two shut down ran their shutdown actions: a clean halt, not a kill
    assert lines_of(s, "shutdowns") == 1 and lines_of(u, "shutdowns") == 1
    assert lines_of(a, "shutdowns") == 0          # checkpointed: nothing ran inside
    # an empty file: the loop was stopped between truncating and writing it
    at = {ct.name: counter(ct) or pre[ct.name] for ct in (a, b)}
    at_dom = dcount() or pre_dom
    assert all(at.values()) and at_dom, (at, at_dom)

    manifest = images / "manifest.json"
    assert manifest.stat().st_mode & 0o777 == 0o600
    entries = {e["name"]: e for e in json.loads(manifest.read_text())["entries"]}
    assert set(entries) == {a.name, b.name, s.name, u.name, d}
    for n in (a.name, b.name, d):
        e = entries[n]
        assert e["outcome"] == "checkpointed" and e["state"] == "pending"
        assert e["sha256"] == sha256_file(e["image_file"]), n
        assert e["size"] == os.path.getsize(e["image_file"])
    assert entries[a.name]["order"] == 2 and entries[d]["kind"] == "libvirt"
    assert entries[s.name]["outcome"] == "shutdown" and not entries[s.name]["fallback"]
    assert entries[u.name]["fallback"] and "io_uring" in entries[u.name]["reason"]
    pend = sorted(p.name for p in (Path(env["LXC_CR_STATE_DIR"]) / "pending").iterdir())
    assert pend == sorted([f"lxc-{a.name}.json", f"lxc-{b.name}.json", f"libvirt-{d}.json"])

    # --- the reboot -------------------------------------------------------------------------
    simulate_reboot([a, b, s, u], d)
    for ct in (a, b, s, u):
        assert ct.state() == "STOPPED"

    # --- host boot --------------------------------------------------------------------------
    r = host("boot", env=env)
    assert r.returncode == 0, r.stderr
    lines = per_container(r.stderr)
    assert set(lines) == {a.name, b.name, s.name, u.name, d}, r.stderr
    for ct in (a, b):
        assert re.fullmatch(rf"restored in \d+\.\d\d s \({images}/lxc/{ct.name}/lxc-cr\.img\)",
                            lines[ct.name]), lines[ct.name]
    assert re.fullmatch(r"restored in \d+\.\d\d s \(.*\)", lines[d]), lines[d]
    assert lines[s.name].startswith("cold-started in "), lines[s.name]
    assert lines[u.name] == "left stopped (policy: start_at_boot false)"
    # policy order: the domain (0), then b (1), then a (2)
    order = [LINE.match(x).group(2) for x in r.stderr.splitlines() if LINE.match(x)]
    assert order.index(d) < order.index(b.name) < order.index(a.name), order

    for ct in (a, b):
        assert ct.state() == "RUNNING"
        seen = wait_for(lambda ct=ct: counter(ct) > at[ct.name] and counter(ct),
                        timeout=60, what=f"{ct.name}'s counter to continue")
        assert seen <= at[ct.name] + 100, "the counter restarted instead of continuing"
        assert lines_of(ct, "boots") == 1, "a restored container must not boot again"
    assert dom_state(d) == "running"
    seen = wait_for(lambda: dcount() > at_dom and dcount(), timeout=60,
                    what="the domain's counter to continue")
    assert seen <= at_dom + 100
    assert not managed_save(d).exists()
    assert s.state() == "RUNNING"
    wait_for(lambda: lines_of(s, "boots") == 2, timeout=60, what="the cold boot of the shutdown one")
    assert u.state() == "STOPPED"
    assert lines_of(u, "boots") == 1

    states = {e["name"]: e["state"] for e in json.loads(manifest.read_text())["entries"]}
    assert states == {a.name: "restored", b.name: "restored", d: "restored",
                      s.name: "started", u.name: "left-stopped"}
    assert not list((Path(env["LXC_CR_STATE_DIR"]) / "pending").iterdir())
    # a second boot finds nothing left to do
    r = host("boot", env=env)
    assert r.returncode == 0 and "nothing to restore" in r.stderr, r.stderr
    assert not per_container(r.stderr)


def test_malformed_config_still_shuts_down_cleanly(lxc_container, tmp_path):
    ct = busybox(lxc_container, "hr-bad")
    config = tmp_path / "config.yaml"
    config.write_text(f"containers:\n  {ct.name}:\n    action: hibernate\n")
    env = {"LXC_CR_CONFIG": str(config), "LXC_CR_STATE_DIR": str(tmp_path / "state")}
    r = host("shutdown", "--only", ct.name, "--image-dir", tmp_path / "images", env=env)
    assert r.returncode == 2, r.stderr
    err = [x for x in r.stderr.splitlines() if x.startswith("lxc-cr: error:")]
    want = (f"lxc-cr: error: {config}:3: containers.{ct.name}.action: 'hibernate' is not one "
            "of checkpoint, shutdown, ignore")
    assert err == [want], r.stderr
    assert re.fullmatch(r"shut down cleanly in \d+\.\d\d s", per_container(r.stderr)[ct.name])
    assert ct.state() == "STOPPED"
    assert lines_of(ct, "shutdowns") == 1, "a kill, not a clean shutdown"
    assert not (tmp_path / "images" / "lxc").exists(), "nothing may be checkpointed"
    # boot with the same broken file: the error again, and the recorded start_at_boot
    r = host("boot", "--only", ct.name, "--image-dir", tmp_path / "images", env=env)
    assert r.returncode == 2 and per_container(r.stderr)[ct.name].startswith("cold-started")
    assert ct.state() == "RUNNING"
    ct.stop()


def rendered_units(tmp_path, lxc_cr: str) -> Path:
    """The repo's systemd files as `lxc-cr hooks install` writes them, beside lxc.service."""
    from lxc_cr import commands_hooks
    out = tmp_path / "units"
    (out / "lxc.service.d").mkdir(parents=True)
    for _what, src, dst in commands_hooks.INSTALLS:
        if dst.startswith("/etc/systemd/system/"):
            rel = dst[len("/etc/systemd/system/"):]
            (out / rel).write_bytes(commands_hooks.render(src).replace(
                commands_hooks.lxc_cr_path().encode(), lxc_cr.encode()))
    lxc_service = Path("/lib/systemd/system/lxc.service")
    (out / "lxc.service").write_text(lxc_service.read_text() if lxc_service.exists() else
                                     "[Unit]\nDescription=lxc\n[Service]\nType=oneshot\n"
                                     "ExecStart=/bin/true\n")
    return out


def verify(*units: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=120,
                          env={**os.environ, "SYSTEMD_LOG_COLOR": "0"}, check=False)


def test_systemd_units_verify(tmp_path):
    import shutil
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing (apt: systemd)", pytrace=False)
    from lxc_cr import commands_hooks
    assert commands_hooks.lxc_cr_path() == str(Path(sys.executable).parent / "lxc-cr")
    out = rendered_units(tmp_path, str(LXC_CR))
    unit = (out / "lxc-cr-host.service").read_text()
    assert "@LXC_CR@" not in unit
    assert f"ExecStart={LXC_CR} host boot" in unit and f"ExecStop={LXC_CR} host shutdown" in unit
    after = " ".join(x.split("=", 1)[1] for x in unit.splitlines() if x.startswith("After="))
    for u in ("lxc.service", "libvirtd.service", "virtlxcd.service", "network-online.target"):
        assert u in after.split(), u
    assert f"ExecStartPre=-{LXC_CR} host boot --kind lxc" in \
        (out / "lxc.service.d" / "lxc-cr.conf").read_text()
    # verify loads lxc.service with the drop-in beside it; no warning is accepted
    r = verify(out / "lxc-cr-host.service", out / "lxc.service")
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    # the check can fail: a typo in the drop-in, and a unit naming a missing binary
    with open(out / "lxc.service.d" / "lxc-cr.conf", "a") as f:
        f.write("ExecStartPr=/bin/true\n")
    r = verify(out / "lxc.service")
    assert "Unknown key 'ExecStartPr'" in r.stderr, r.stderr
    bad = rendered_units(tmp_path / "bad", "/nonexistent/lxc-cr")
    r = verify(bad / "lxc-cr-host.service")
    assert r.returncode != 0 and "/nonexistent/lxc-cr" in r.stderr, r.stderr


def test_boot_cold_starts_when_the_image_was_changed(lxc_container, tmp_path):
    ct = busybox(lxc_container, "hr-flip")
    config = tmp_path / "config.yaml"
    config.write_text(f"scope: listed\ncontainers:\n  {ct.name}: {{timeout: 60}}\n")
    env = {"LXC_CR_CONFIG": str(config), "LXC_CR_STATE_DIR": str(tmp_path / "state")}
    images = tmp_path / "images"
    r = host("shutdown", "--image-dir", images, env=env)
    assert r.returncode == 0, r.stderr
    assert per_container(r.stderr)[ct.name].startswith("checkpointed in ")
    img = images / "lxc" / ct.name / "lxc-cr.img"
    data = bytearray(img.read_bytes())
    data[len(data) // 2] ^= 0xFF
    img.write_bytes(bytes(data))
    r = host("boot", "--image-dir", images, env=env)
    assert r.returncode == 1, r.stderr
    line = per_container(r.stderr)[ct.name]
    assert re.fullmatch(rf"restore failed: {img}: checksum mismatch \(image changed since the "
                        rf"shutdown\); cold-started in \d+\.\d\d s \(image kept: {img}\)", line), line
    assert ct.state() == "RUNNING"
    wait_for(lambda: lines_of(ct, "boots") == 2, timeout=60, what="the cold boot")
    entry = json.loads((images / "manifest.json").read_text())["entries"][0]
    assert entry["state"] == "cold-started" and "checksum" in entry["boot_error"]
    assert not list((tmp_path / "state" / "pending").iterdir()), "the image must not stay pending"
    ct.stop()


def test_checkpoint_timeout_falls_back_and_ignore_is_left_alone(lxc_container, tmp_path):
    slow = busybox(lxc_container, "hr-slow")
    keep = busybox(lxc_container, "hr-keep")
    config = tmp_path / "config.yaml"
    config.write_text(f"scope: listed\ncontainers:\n  {slow.name}: {{timeout: 4}}\n"
                      f"  {keep.name}: {{action: ignore}}\n")
    trace = tmp_path / "trace"
    # the dump of the slow one stops (frozen) at step 2 for far longer than its timeout
    env = {"LXC_CR_CONFIG": str(config), "LXC_CR_STATE_DIR": str(tmp_path / "state"),
           "LXC_CR_FAULT_TRACE": str(trace), "LXC_CR_FAULT_HOLD": "dump:2",
           "LXC_CR_FAULT_HOLD_SECONDS": "600"}
    images = tmp_path / "images"
    r = host("shutdown", "--image-dir", images, env=env)
    assert r.returncode == 1, r.stderr
    assert re.search(r"^dump 2 .*frozen$", trace.read_text(), re.MULTILINE), trace.read_text()
    lines = per_container(r.stderr)
    assert re.fullmatch(r"checkpoint failed: timed out after 4 s; (shut down cleanly|killed after "
                        r"a clean shutdown timed out \(4 s\)) in \d+\.\d\d s", lines[slow.name]), \
        lines[slow.name]
    assert lines[keep.name] == "left running (policy: ignore)"
    assert slow.state() == "STOPPED"
    assert not list((images / "lxc" / slow.name).glob("*.img*")), "a partial image was left"
    assert keep.state() == "RUNNING"
    c0 = counter(keep)
    wait_for(lambda: counter(keep) > c0, what="the ignored container to keep running")
    entries = json.loads((images / "manifest.json").read_text())["entries"]
    assert [e["name"] for e in entries] == [slow.name]
    assert entries[0]["fallback"] and entries[0]["reason"] == "timed out after 4 s"
    keep.stop()


def test_domain_shutdown_policy_and_cold_boot(libvirt_domain, tmp_path):
    dom, dcount = counter_domain(libvirt_domain, tmp_path, "hr-dshut")
    d = dom.name()
    config = tmp_path / "config.yaml"
    config.write_text(f"scope: listed\ndomains:\n  {d}: {{action: shutdown, timeout: 3}}\n")
    env = {"LXC_CR_CONFIG": str(config), "LXC_CR_STATE_DIR": str(tmp_path / "state")}
    images = tmp_path / "images"
    r = host("shutdown", "--image-dir", images, env=env)
    assert r.returncode == 0, r.stderr
    # a shell as init ignores SIGTERM: libvirt's shutdown times out, then the destroy
    assert re.fullmatch(r"(shut down cleanly|destroyed after a clean shutdown timed out "
                        r"\(3 s\)) in \d+\.\d\d s \(policy: shutdown\)", per_container(r.stderr)[d])
    assert dom_state(d) == "shut off"
    assert not managed_save(d).exists()
    stopped_at = dcount()
    r = host("boot", "--image-dir", images, env=env)
    assert r.returncode == 0, r.stderr
    assert per_container(r.stderr)[d].startswith("cold-started in ")
    assert dom_state(d) == "running"
    # a cold boot: the loop starts again from 1
    wait_for(lambda: 0 < dcount() < stopped_at, timeout=60, what="the counter to start over")
