"""A plain ``lxc-start`` of a real busybox container resumes its pending image once
``lxc-cr hooks install`` registered the start-host hook; the policy can say boot fresh;
``hooks uninstall`` leaves the config byte for byte as it was.

State is kept per test: LXC_CR_STATE_DIR (pending registry), LXC_CR_CONFIG (policy) and
LXC_CR_LOG_DIR (the hook's log) point into tmp_path and reach the hook through lxc-start's
environment."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from test_lxc_checkpoint import (
    VENV_BIN,
    counter,
    counter_container,
    lxc_info,
    processes,
    run,
    wait_for,
)


@pytest.fixture
def state(tmp_path, monkeypatch):
    env = {"LXC_CR_STATE_DIR": str(tmp_path / "state"),
           "LXC_CR_CONFIG": str(tmp_path / "config.yaml"),
           "LXC_CR_LOG_DIR": str(tmp_path / "log")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return tmp_path


def lxc_cr(*argv, ok=True):
    r = run(VENV_BIN / "lxc-cr", *argv)
    if ok:
        assert r.returncode == 0, r.stderr
    return r


def pending(ct):
    from lxc_cr import pending as registry
    return registry.lookup("lxc", ct.name, ct.lxcpath)


def hook_log(state, ct) -> str:
    p = state / "log" / f"lxc-{ct.name}.log"
    return p.read_text() if p.exists() else ""


def config(ct) -> Path:
    return Path(ct.lxcpath) / ct.name / "config"


def checkpoint_stop(ct, d, least=30) -> int:
    """Let the counter pass LEAST (so a fresh boot, counting from 1 again, shows), then
    ``lxc-checkpoint -s``; return the counter at the checkpoint."""
    wait_for(lambda: counter(ct) >= least, what=f"the counter to reach {least}")
    before = counter(ct)
    r = run(VENV_BIN / "lxc-checkpoint", "-n", ct.name, "-P", ct.lxcpath, "-D", d, "-s")
    assert r.returncode == 0, r.stderr
    assert re.search(r"State:\s+STOPPED", lxc_info(ct))
    return counter(ct) or before


def plain_start(ct):
    r = run("lxc-start", "-n", ct.name, "-P", ct.lxcpath, "-d")
    assert r.returncode == 0, r.stderr


def test_plain_lxc_start_resumes_pending_image(lxc_container, state):
    ct = counter_container(lxc_container, "hookres")
    original = config(ct).read_bytes()
    before = processes(ct)
    d = state / "ckpt"
    at = checkpoint_stop(ct, d)
    rec = pending(ct)
    assert rec is not None and rec["image"] == str(d) and len(rec["sha256"]) == 64

    out = lxc_cr("hooks", "install", "--container", ct.name, "-P", ct.lxcpath).stdout
    assert f"{ct.name}: registered" in out, out
    registered = config(ct).read_bytes()
    assert registered.startswith(original) and b"lxc.hook.start-host" in registered
    out = lxc_cr("hooks", "install", "--container", ct.name, "-P", ct.lxcpath).stdout
    assert f"{ct.name}: already registered" in out, out
    assert config(ct).read_bytes() == registered
    out = lxc_cr("hooks", "status", "-P", ct.lxcpath).stdout
    assert f"lxc start-host hook: {ct.name}: registered" in out, out
    assert re.search(rf"pending image: lxc {re.escape(ct.name)} .*{re.escape(str(d))}", out), out

    plain_start(ct)
    wait_for(lambda: re.search(r"State:\s+RUNNING", lxc_info(ct)), what="RUNNING")
    seen = wait_for(lambda: counter(ct) > at and counter(ct), timeout=60,
                    what="the counter to go on")
    assert seen <= at + 100, f"counter {seen} after {at}: not the checkpointed loop"
    assert processes(ct) == before
    assert "seized" in hook_log(state, ct)
    wait_for(lambda: pending(ct) is None, what="the pending image to be consumed")
    assert "pending images: none" in lxc_cr("hooks", "status", "-P", ct.lxcpath).stdout

    # lxc-cr lxc restore of a registered container: the hook runs once (config only)
    at = checkpoint_stop(ct, state / "ckpt2", least=at + 5)
    assert pending(ct) is not None
    lxc_cr("lxc", "restore", ct.name, state / "ckpt2", "-P", ct.lxcpath)
    wait_for(lambda: counter(ct) > at, what="the counter after lxc-cr lxc restore")
    assert pending(ct) is None
    ct.stop()

    out = lxc_cr("hooks", "uninstall", "--container", ct.name, "-P", ct.lxcpath).stdout
    assert f"{ct.name}: removed" in out, out
    assert config(ct).read_bytes() == original
    out = lxc_cr("hooks", "uninstall", "--container", ct.name, "-P", ct.lxcpath).stdout
    assert f"{ct.name}: not registered" in out, out
    assert config(ct).read_bytes() == original


@pytest.mark.parametrize("policy, why", [
    ("defaults: {resume_on_start: false}\n", "resume_on_start is false"),
    ("defaults: {resume_on_start: [\n", "policy unreadable"),
])
def test_plain_start_boots_fresh_when_policy_says_so(lxc_container, state, policy, why):
    ct = counter_container(lxc_container, "hookfresh")
    d = state / "ckpt"
    at = checkpoint_stop(ct, d)
    (state / "config.yaml").write_text(policy)
    lxc_cr("hooks", "install", "--container", ct.name, "-P", ct.lxcpath)
    plain_start(ct)
    wait_for(lambda: re.search(r"State:\s+RUNNING", lxc_info(ct)), what="RUNNING")
    # a fresh boot: rcS counts from 1 again
    wait_for(lambda: 0 < counter(ct) < at, timeout=60, what="the counter to restart")
    log = hook_log(state, ct)
    assert "booting fresh" in log and why in log, log
    assert len([ln for ln in log.splitlines() if "booting fresh" in ln]) == 1, log
    assert pending(ct)["image"] == str(d), "the image must stay pending"
    ct.stop()
    lxc_cr("hooks", "uninstall", "--container", ct.name, "-P", ct.lxcpath)


@pytest.mark.parametrize("where", ["page block", "record"])
def test_failed_resume_kills_container_and_keeps_image_pending(lxc_container, state, where):
    """A corrupt page block is found while the pages are written (the tree is being built,
    the init seized); a corrupt record is found when the image is opened, in its record
    pack's checksum, before the init is seized, and the hook fails the start: either way
    the container is stopped, nothing is left waiting on it, the image stays pending."""
    ct = counter_container(lxc_container, "hookbad")
    d = state / "ckpt"
    checkpoint_stop(ct, d, least=5)
    image = d / "lxc-cr.img"
    from lxc_cr.image.reader import ImageReader
    with ImageReader(str(image)) as r:
        if where == "page block":
            block = next(iter(r.records("pages")))[1].block
            offset = block.offset
        else:
            offset = r.pack_offset + 20      # in the record pack (compressed records)
    with open(image, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))
    lxc_cr("hooks", "install", "--container", ct.name, "-P", ct.lxcpath)
    r = run("lxc-start", "-n", ct.name, "-P", ct.lxcpath, "-d")
    # the hook returns once the init is seized; the rebuild then fails and stops it
    wait_for(lambda: re.search(r"State:\s+STOPPED", lxc_info(ct)) and
             "lxc-cr: error:" in hook_log(state, ct), timeout=90,
             what=f"the container to be stopped (lxc-start rc {r.returncode})")
    log = hook_log(state, ct)
    if where == "page block":
        assert "resume failed" in log, log
    else:
        assert "record pack checksum mismatch" in log and "resume failed" not in log, log
    assert pending(ct) is not None, "the image must stay pending"
    time.sleep(1)
    assert re.search(r"State:\s+STOPPED", lxc_info(ct)), "the container booted after all"
    left = [p for p in os.listdir("/proc") if p.isdigit() and ct.name in _cmdline(int(p))
            and "resume" in _cmdline(int(p))]
    assert not left, f"an lxc-cr resume of {ct.name} is still running: {left}"
    lxc_cr("hooks", "uninstall", "--container", ct.name, "-P", ct.lxcpath)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
