"""lxc_cr.pending: the registry of pending images, in a temporary state directory."""

import json
import os
import stat

import pytest

from lxc_cr import pending


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("LXC_CR_STATE_DIR", str(tmp_path))
    return tmp_path


def test_mark_lookup_consume(state):
    img = state / "web"
    img.mkdir()
    (img / "lxc-cr.img").write_bytes(b"abc")
    assert pending.lookup("lxc", "web") is None
    pending.mark("lxc", "web", str(img))
    rec = pending.lookup("lxc", "web")
    assert rec["image"] == str(img) and rec["name"] == "web" and rec["kind"] == "lxc"
    assert rec["size"] == 3
    assert rec["sha256"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    d = state / "pending"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    files = os.listdir(d)
    assert files == ["lxc-web.json"]
    assert stat.S_IMODE((d / files[0]).stat().st_mode) == 0o600
    assert json.loads((d / files[0]).read_text())["lxcpath"] == "/var/lib/lxc"
    pending.consume("lxc", "web")
    pending.consume("lxc", "web")
    assert pending.lookup("lxc", "web") is None


def test_targets_are_separate(state):
    f = state / "dom.save"
    f.write_bytes(b"x" * 10)
    pending.mark("libvirt", "web", str(f))
    pending.mark("lxc", "web", str(f), lxcpath=str(state / "other"))
    pending.mark("lxc", "a/b c", str(f))
    assert pending.lookup("lxc", "web") is None
    assert pending.lookup("lxc", "web", lxcpath=str(state / "other"))["image"] == str(f)
    assert [r["name"] for r in pending.all("libvirt")] == ["web"]
    assert sorted(r["name"] for r in pending.all("lxc")) == ["a/b c", "web"]
    assert len(pending.all()) == 3
    pending.mark("libvirt", "web", str(state / "newer.save"))
    assert pending.lookup("libvirt", "web")["image"] == str(state / "newer.save")
    assert pending.lookup("libvirt", "web")["sha256"] is None


def test_corrupt_record_is_no_record(state):
    pending.mark("libvirt", "x", "/nonexistent")
    (state / "pending" / "libvirt-x.json").write_text("{not json")
    assert pending.lookup("libvirt", "x") is None
    assert pending.all() == []


def test_bad_kind(state):
    with pytest.raises(ValueError):
        pending.mark("docker", "x", "/tmp")
