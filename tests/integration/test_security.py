"""Integrity, privacy, privilege and compatibility of images (issue "Reliability and security").

Every test runs a real program, tests/workloads/wl_unpriv.c: started as root, it drops to
uid/gid 1000 with no capability, then keeps trying to get root back (setuid(0), opening a
root-only file, raising CAP_SYS_ADMIN) and reports each errno in its state file.

Forged images are made the way ``lxc-cr convert`` rewrites an image (convert.writer_for and
recode): every record and block re-encoded by the image library, so every checksum is valid
and only what the test edits differs.

"No process was created" is checked exactly: the refused restore runs as the only program
in a fresh pid namespace (``unshare --pid --fork sh``), and the namespace's
/proc/sys/kernel/ns_last_pid afterwards must still be lxc-cr's own pid (2): any fork of lxc-cr
(the restore's init included) would have taken pid 3.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
from test_tree_creds import snapshot_creds
from treeutil import (
    LXC_CR,
    CliResult,
    all_pids_with_exe,
    assert_continued,
    assert_one_error_line,
    assert_running_untraced,
    build,
    dump_kill,
    harness_fixture,
    read_state,
    status,
    wait_changed,
    wait_for,
)

from lxc_cr import hostcompat
from lxc_cr.image.convert import recode, writer_for
from lxc_cr.image.reader import ImageReader, iter_block_refs

pytestmark = pytest.mark.integration

tree = harness_fixture()

UNPRIV = {"uid": "1000", "gid": "1000", "setuid0": "EPERM", "open": "EACCES", "capset": "EPERM"}


def launch_unpriv(tree):
    """wl_unpriv running unprivileged; returns (workload, dir, binary)."""
    binary = build("wl_unpriv")
    d = tree.dir("sec", 0o777)
    secret = d / "secret"
    secret.write_text("root only\n")
    os.chmod(secret, 0o600)
    wl = tree.launch([binary, d, secret])
    st = wait_for(lambda: (s := read_state(d / "state")) and int(s.get("counter", 0)) >= 2 and s,
                  "wl_unpriv: dropped its privileges and wrote its state")
    assert st["ok"] == "1", f"wl_unpriv could not drop its privileges: {st}"
    assert {k: st[k] for k in UNPRIV} == UNPRIV, st
    return wl, d, binary


def forge(src, dst, edit=None, **header) -> None:
    """Re-encode image SRC as DST through the image library, records changed by ``edit``
    and header fields by ``header``; DST passes the reader's full verification."""
    with ImageReader(src) as r, writer_for(r, dst, **header) as w:
        recode(r, w, edit)
    with ImageReader(dst) as r:
        r.verify()


def restore_alone(tree, image, *extra) -> tuple[CliResult, int]:
    """``lxc-cr tree restore IMAGE EXTRA`` as the only program of a fresh pid namespace;
    returns its result and the namespace's last pid (2 = lxc-cr created no process)."""
    out, err, last = (tree.base / f"alone-{n}" for n in ("out", "err", "last"))
    argv = [LXC_CR, "tree", "restore", str(image), *map(str, extra)]
    script = (f"{shlex.join(argv)} >{out} 2>{err}; rc=$?; "
              f"read last < /proc/sys/kernel/ns_last_pid; echo $last > {last}; exit $rc")
    p = subprocess.run(["unshare", "--pid", "--fork", "sh", "-c", script],
                       stdin=subprocess.DEVNULL, timeout=120, check=False)
    res = CliResult(argv, p.returncode, out.read_text(), err.read_text())
    return res, int(last.read_text())


def assert_refused(tree, image, binary, *extra, want: str) -> str:
    """The restore exits 2 with one error line containing ``want`` and creates nothing."""
    res, last = restore_alone(tree, image, *extra)
    line = assert_one_error_line(res)
    assert res.rc == 2, res.describe()
    assert want in line, f"expected {want!r} in the error line\n{res.describe()}"
    assert last == 2, f"the refused restore created {last - 2} process(es)\n{res.describe()}"
    assert not all_pids_with_exe(binary), "a process of the refused image exists"
    return line


def test_unprivileged_workload_stays_unprivileged(tree):
    wl, d, _binary = launch_unpriv(tree)
    before = snapshot_creds(wl.root)
    (threads, _limits), = before.values()
    for cred in threads.values():
        assert cred["Uid"] == cred["Gid"] == "1000\t1000\t1000\t1000", cred
        assert cred["CapEff"] == cred["CapPrm"] == cred["CapInh"] == cred["CapAmb"] == \
            "0000000000000000", cred
    img = d / "img"
    dump_kill(tree, wl.root, img)
    st = os.stat(img)
    assert (st.st_uid, st.st_mode & 0o7777) == (0, 0o600), f"image owner/mode {st}"
    last = read_state(d / "state")
    root = tree.restore(img, "--max-privilege", "unprivileged")
    after_state = wait_changed(d / "state", last)
    assert_continued(last, after_state, what="wl_unpriv")
    # what the program itself sees after the restore: its attempts still fail
    assert {k: after_state[k] for k in UNPRIV} == UNPRIV, after_state
    after = snapshot_creds(root)
    assert after == before, f"credentials changed:\nbefore {before}\nafter  {after}"
    assert_running_untraced(root)


def full_root(kind, obj) -> None:
    """Edit: every creds record becomes uid/gid 0 with every capability it may hold."""
    if kind is not None and kind.name == "creds":
        obj.uids = [0, 0, 0, 0]
        obj.gids = [0, 0, 0, 0]
        obj.cap_eff = obj.cap_prm = obj.cap_bnd


def test_forged_root_credentials_refused_by_max_privilege(tree):
    wl, d, binary = launch_unpriv(tree)
    img, forged = d / "img", d / "forged"
    dump_kill(tree, wl.root, img)
    forge(img, forged, full_root)
    line = assert_refused(tree, forged, binary, "--max-privilege", "unprivileged",
                          want="pid 1 (wl_unpriv): ruid 0 exceeds --max-privilege unprivileged")
    line = assert_refused(tree, forged, binary, "--max-privilege", "uid>=1000 caps=CAP_KILL",
                          want="pid 1 (wl_unpriv): ruid 0 exceeds --max-privilege "
                               "uid>=1000 caps=CAP_KILL")
    # uids allowed, capabilities not: the field named is the capability set
    line = assert_refused(tree, forged, binary, "--max-privilege", "caps=CAP_KILL",
                          want="pid 1 (wl_unpriv): cap_eff CAP_CHOWN,")
    assert "CAP_SYS_ADMIN" in line and "CAP_KILL," not in line, line
    # without the policy the same image is accepted, and the program is then root: the
    # difference is the policy, not a broken image
    last = read_state(d / "state")
    root = tree.restore(forged)
    st = wait_changed(d / "state", last)
    assert_continued(last, st, what="wl_unpriv (forged image)")
    assert (st["setuid0"], st["open"], st["capset"]) == ("ok", "ok", "ok"), st
    assert status(root)["Uid"] == "0\t0\t0\t0"


def test_image_without_a_threads_creds_refused(tree):
    """A thread with no creds record would keep the restorer's root: refused, with or
    without --max-privilege."""
    wl, d, binary = launch_unpriv(tree)
    img, forged = d / "img", d / "forged"
    dump_kill(tree, wl.root, img)
    forge(img, forged, lambda kind, obj: kind is None or kind.name != "creds")
    want = "pid 1 (wl_unpriv): 0 creds records instead of one: the image was edited"
    assert_refused(tree, forged, binary, want=want)
    assert_refused(tree, forged, binary, "--max-privilege", "unprivileged", want=want)


def test_pages_record_larger_than_its_block_refused_before_any_process(tree):
    """A PAGES record claiming one page more than its block holds (the rest would come from
    a stale buffer, or past the block in the mapped image) is refused before any process
    is created."""
    wl, d, binary = launch_unpriv(tree)
    img, forged = d / "img", d / "forged"
    dump_kill(tree, wl.root, img)
    grown = []

    def grow(kind, obj):
        if kind is not None and kind.name == "pages" and not grown:
            obj.npages += 1
            grown.append((obj.vaddr, obj.npages, obj.block.length))
    forge(img, forged, grow)
    vaddr, npages, length = grown[0]
    assert_refused(tree, forged, binary,
                   want=f"pages of pid 1 at {vaddr:#x}: {npages} pages, but a block of "
                        f"{length} bytes")


def test_flipped_byte_refused_before_any_process(tree):
    wl, d, binary = launch_unpriv(tree)
    img = d / "img"
    dump_kill(tree, wl.root, img)
    data = img.read_bytes()
    with ImageReader(img) as r:
        pack = r.pack_offset
        block = next(ref["offset"] for _k, obj in r.records() for ref in iter_block_refs(obj)
                     if ref["stored"])
    # the records (the creds among them) are in the compressed record pack: flip a byte
    bad = d / "bad"
    at = pack + 15
    bad.write_bytes(data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1:])
    assert_refused(tree, bad, binary, want=f"record pack checksum mismatch at offset {pack}")
    # a page block: refused too (exit 2), and nothing of the image is left running (the
    # restore may check a block as it reads it: then what it created is killed)
    at = block + 100
    bad.write_bytes(data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1:])
    res = tree.cli("tree", "restore", bad)
    line = assert_one_error_line(res)
    assert res.rc == 2 and "block checksum mismatch" in line, res.describe()
    assert f"at offset {block}" in line, line
    wait_for(lambda: not all_pids_with_exe(binary), "no process of the refused image left")


def test_encrypted_round_trip_and_refusals(tree):
    wl, d, binary = launch_unpriv(tree)
    key, other, loose = d / "key", d / "other.key", d / "loose.key"
    for path, text in ((key, os.urandom(32).hex() + "\n"), (other, os.urandom(32).hex()),
                       (loose, os.urandom(32).hex())):
        path.write_text(text)
        os.chmod(path, 0o600)
    os.chmod(loose, 0o644)
    img = d / "img"
    dump_kill(tree, wl.root, img, "--encrypt", key)
    raw = img.read_bytes()
    assert raw.startswith(b"LXCCRENC") and b"LXCCRIMG" not in raw and b"wl_unpriv" not in raw
    assert sorted(p.name for p in d.iterdir()) == sorted(
        ["secret", "state", "img", "key", "other.key", "loose.key"]), \
        f"something besides the encrypted image was left: {sorted(os.listdir(d))}"
    st = os.stat(img)
    assert (st.st_uid, st.st_mode & 0o7777) == (0, 0o600)
    # inspect needs the key
    res = tree.cli("inspect", img)
    assert res.rc == 2 and "encrypted" in assert_one_error_line(res), res.describe()
    res = tree.cli("inspect", img, "--key", key)
    assert res.rc == 0 and "wl_unpriv" in res.out, res.describe()
    # refusals: no key, wrong key, a loose key file, a truncated and a flipped image
    assert_refused(tree, img, binary, want="the image is encrypted")
    assert_refused(tree, img, binary, "--key", other, want="wrong key")
    assert_refused(tree, img, binary, "--key", loose, want="chmod 600")
    cut = d / "cut"
    cut.write_bytes(raw[:len(raw) - 1000])
    assert_refused(tree, cut, binary, "--key", key, want="fails authentication")
    flipped = d / "flipped"
    mid = len(raw) // 2
    flipped.write_bytes(raw[:mid] + bytes([raw[mid] ^ 1]) + raw[mid + 1:])
    assert_refused(tree, flipped, binary, "--key", key, want="fails authentication")
    for p in (cut, flipped):
        p.unlink()
    # and the real thing
    last = read_state(d / "state")
    root = tree.restore(img, "--key", key, "--max-privilege", "uid>=1000 caps=none")
    after = wait_changed(d / "state", last)
    assert_continued(last, after, what="wl_unpriv (encrypted image)")
    assert {k: after[k] for k in UNPRIV} == UNPRIV, after
    assert_running_untraced(root)


# --- compatibility --------------------------------------------------------------------------

def test_image_from_cpu_with_more_xsave_features_refused(tree):
    wl, d, binary = launch_unpriv(tree)
    img = d / "img"
    dump_kill(tree, wl.root, img)
    here = hostcompat.host_xfeatures()
    with ImageReader(img) as r:
        recorded = r.header.xcr0
    assert recorded and recorded & ~here == 0, f"image XCR0 {recorded:#x}, host {here:#x}"
    extra = next(1 << b for b in range(3, 19) if not here >> b & 1)
    forged = d / "forged"
    forge(img, forged, xcr0=recorded | extra)
    line = assert_refused(tree, forged, binary,
                          want=f"the image needs xsave features this CPU lacks: {extra:#x} "
                               f"(bit {extra.bit_length() - 1} "
                               f"{hostcompat.XFEATURE_NAMES[extra.bit_length() - 1]})")
    assert f"this CPU {here:#x}" in line, line


@pytest.mark.parametrize("change", ["size", "content"])
def test_image_from_other_vdso_refused(tree, change):
    wl, d, binary = launch_unpriv(tree)
    img = d / "img"
    dump_kill(tree, wl.root, img)
    size, digest = hostcompat.host_vdso()
    with ImageReader(img) as r:
        assert (r.header.vdso_size, bytes(r.header.vdso_hash)) == (size, digest)
    forged = d / "forged"
    if change == "size":
        forge(img, forged, vdso_size=size + 4096)
        want = f"image {size + 4096} bytes sha256 {digest.hex()[:16]}, this kernel {size} bytes"
    else:
        other = bytes(b ^ 0xFF for b in digest)
        forge(img, forged, vdso_hash=other)
        want = (f"image {size} bytes sha256 {other.hex()[:16]}, this kernel {size} bytes "
                f"sha256 {digest.hex()[:16]}")
    line = assert_refused(tree, forged, binary, want=want)
    assert "the vdso differs from this kernel's" in line, line
    assert Path(img).exists()


# --- LXC: the same options on lxc-cr lxc / lxc-checkpoint -----------------------------------

def test_lxc_encrypted_checkpoint_and_privilege_policy(lxc_container, tmp_path):
    from test_lxc_checkpoint import VENV_BIN, counter, counter_container, lxc_info, run
    ct = counter_container(lxc_container, "sec")
    key = tmp_path / "key"
    key.write_bytes(os.urandom(32))
    os.chmod(key, 0o600)
    d = tmp_path / "ckpt"
    r = run(VENV_BIN / "lxc-checkpoint", "-n", ct.name, "-P", ct.lxcpath, "-D", d, "-s",
            "--encrypt", key)
    assert r.returncode == 0, r.stderr
    assert "STOPPED" in lxc_info(ct)
    at = counter(ct)
    from lxc_cr import pending
    assert pending.lookup("lxc", ct.name, ct.lxcpath) is None, \
        "an encrypted image was registered for resuming on a plain lxc-start (no key there)"
    image = d / "lxc-cr.img"
    assert image.read_bytes()[:8] == b"LXCCRENC" and image.stat().st_mode & 0o777 == 0o600
    assert d.stat().st_mode & 0o777 == 0o700
    # refused before LXC starts anything: no key; the container's init is root
    for extra, want, rc in (((), "the image is encrypted", 2),
                            (("--key", key, "--max-privilege", "unprivileged"),
                             "pid 1 (init): ruid 0 exceeds --max-privilege unprivileged", 2),
                            (("--max-privilege", "uid>=0 caps=CAP_KILL", "--key", key),
                             "pid 1 (init): cap_eff CAP_CHOWN,", 2)):
        r = run(VENV_BIN / "lxc-cr", "lxc", "restore", ct.name, d, "-P", ct.lxcpath, *extra)
        lines = r.stderr.splitlines()
        assert r.returncode == rc and len(lines) == 1 and want in lines[0], r.stderr
        assert lines[0].startswith("lxc-cr: error:"), r.stderr
        assert "STOPPED" in lxc_info(ct), f"the container was started: {extra}"
    r = run(VENV_BIN / "lxc-checkpoint", "-n", ct.name, "-P", ct.lxcpath, "-D", d, "-r",
            "--encrypt", key, "--max-privilege", "uid>=0")
    assert r.returncode == 0, r.stderr
    assert "RUNNING" in lxc_info(ct)
    seen = wait_for(lambda: counter(ct) > at and counter(ct), "the counter to go on")
    assert seen <= at + 50, "the counter restarted instead of continuing"
    ct.stop()


def test_libvirt_encrypted_save_and_privilege_policy(libvirt_domain, tmp_path):
    from test_libvirt_save import LXC_CR as CLI
    from test_libvirt_save import counter_domain, run, state
    dom, count = counter_domain(libvirt_domain, tmp_path, "sec")
    name = dom.name()
    key = tmp_path / "key"
    key.write_text(os.urandom(32).hex())
    os.chmod(key, 0o600)
    img = tmp_path / "dom.save"
    pre = count()
    r = run(CLI, "virsh", "save", name, img, "--encrypt", key)
    assert r.returncode == 0, r.stderr
    assert state(name) == "shut off"
    at = count() or pre
    assert img.read_bytes()[:8] == b"LXCCRENC"
    for extra, want in (((), "the image is encrypted"),
                        (("--key", key, "--max-privilege", "unprivileged"),
                         "pid 1 (sh): ruid 0 exceeds --max-privilege unprivileged")):
        r = run(CLI, "virsh", "restore", img, *extra)
        lines = r.stderr.splitlines()
        assert r.returncode == 2 and len(lines) == 1 and want in lines[0], r.stderr
        assert state(name) == "shut off", f"the domain was started: {extra}"
    r = run(CLI, "virsh", "save-image-dumpxml", img, "--key", key)
    assert r.returncode == 0 and f"<name>{name}</name>" in r.stdout, r.stderr
    r = run(CLI, "virsh", "restore", img, "--key", key)
    assert r.returncode == 0, r.stderr
    assert state(name) == "running"
    seen = wait_for(lambda: count() > at and count(), "the counter to go on")
    assert seen <= at + 50, "the counter restarted"
    assert run("virsh", "-c", "lxc:///system", "destroy", name).returncode == 0


def test_encrypted_multi_chunk_image_authenticated_before_any_process(tree):
    """An 8 MiB heap spans several 1 MiB chunks: a flipped bit in page data far from every
    record is caught before any process is created, and the intact image restores with
    the heap's checksum unchanged."""
    from treeutil import state_int
    binary = build("wl_heap")
    d = tree.dir("heap")
    st = d / "state"
    key = d / "key"
    key.write_bytes(os.urandom(32))
    os.chmod(key, 0o600)
    wl = tree.launch([binary, st, "0x5eed", "8"], ready=lambda: state_int(st, "counter") >= 2)
    img = d / "img"
    dump_kill(tree, wl.root, img, "--encrypt", key)
    last = read_state(st)
    raw = img.read_bytes()
    chunks = (len(raw) - 32) // ((1 << 20) + 16)
    assert chunks >= 8, f"{len(raw)} bytes: expected at least 8 chunks"
    at = 32 + 4 * ((1 << 20) + 16) + 1000              # inside chunk 4: heap pages
    bad = d / "bad"
    bad.write_bytes(raw[:at] + bytes([raw[at] ^ 0x40]) + raw[at + 1:])
    assert_refused(tree, bad, binary, "--key", key,
                   want=f"encrypted chunk 4 of {chunks + 1} fails authentication")
    bad.unlink()
    tree.restore(img, "--key", key)
    after = wait_changed(st, last)
    assert_continued(last, after, what="wl_heap (encrypted)")
    assert after["checksum"] == after["checksum0"] and after["bad"] == "0", after
