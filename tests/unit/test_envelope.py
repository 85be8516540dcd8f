"""The encryption envelope (lxc_cr/image/envelope.py) and --max-privilege parsing, on the
demo image: every cut, swap and flip of an encrypted image is refused with one ImageError."""

from __future__ import annotations

import base64
import os

import pytest

from lxc_cr import privilege
from lxc_cr.errors import BadInput, ImageError, UsageError
from lxc_cr.image import envelope
from lxc_cr.image.reader import ImageReader
from lxc_cr.image.sample import write_demo_image

pytestmark = pytest.mark.unit

SHIFT = 12                      # 4 KiB chunks: the demo image spans many
SEALED = (1 << SHIFT) + envelope.TAG_SIZE


@pytest.fixture
def images(tmp_path):
    key = os.urandom(32)
    plain = tmp_path / "plain.img"
    write_demo_image(plain)
    enc = tmp_path / "enc.img"
    with open(plain, "rb") as src, open(enc, "wb") as dst:
        envelope.seal(src.fileno(), os.fstat(src.fileno()).st_size, dst.fileno(), key,
                      chunk_shift=SHIFT)
    return key, plain, enc


def records(path, key=None):
    with ImageReader(path, key=key) as r:
        r.verify()
        return [(tag, payload) for tag, _off, payload in r.raw_records()]


def test_round_trip_through_the_writer(tmp_path):
    key = os.urandom(32)
    write_demo_image(tmp_path / "a.img")
    write_demo_image(tmp_path / "b.img", key=key)
    assert sorted(os.listdir(tmp_path)) == ["a.img", "b.img"]     # no plain temp file left
    assert (tmp_path / "b.img").read_bytes()[:8] == envelope.MAGIC
    assert records(tmp_path / "b.img", key) == records(tmp_path / "a.img")


def test_every_tampering_is_refused(images):
    key, plain, enc = images
    assert records(enc, key) == records(plain)
    data = enc.read_bytes()
    n = (len(data) - envelope.HEADER_SIZE) // SEALED
    assert n >= 4
    bad = enc.with_name("bad.img")
    cases = {
        "cut at a chunk boundary": data[:envelope.HEADER_SIZE + 2 * SEALED],
        "cut inside a chunk": data[:-100],
        "cut to the header": data[:envelope.HEADER_SIZE],
        "last byte dropped": data[:-1],
        "chunks swapped": data[:32] + data[32 + SEALED:32 + 2 * SEALED] + data[32:32 + SEALED]
        + data[32 + 2 * SEALED:],
        "a bit flipped": data[:5000] + bytes([data[5000] ^ 4]) + data[5001:],
        "a tag bit flipped": data[:-1] + bytes([data[-1] ^ 1]),
        "nonce prefix edited": data[:21] + bytes([data[21] ^ 1]) + data[22:],
        "chunk size edited": data[:11] + bytes([SHIFT + 1]) + data[12:],
        "chunk appended": data + data[-SEALED:],
    }
    for what, content in cases.items():
        bad.write_bytes(content)
        with pytest.raises(ImageError) as e:
            records(bad, key)
        assert "\n" not in str(e.value), what
    with pytest.raises(ImageError, match="wrong key"):
        records(enc, os.urandom(32))
    with pytest.raises(ImageError, match="encrypted: give its key file"):
        records(enc)
    with pytest.raises(ImageError, match="not encrypted"):
        records(plain, key)


def test_key_files(tmp_path):
    key = os.urandom(32)
    for name, content in (("raw", key), ("hex", key.hex().encode() + b"\n"),
                          ("b64", base64.b64encode(key) + b"\n")):
        p = tmp_path / name
        p.write_bytes(content)
        os.chmod(p, 0o600)
        assert envelope.load_key(str(p)) == key
    os.chmod(tmp_path / "hex", 0o640)
    with pytest.raises(BadInput, match="chmod 600"):
        envelope.load_key(str(tmp_path / "hex"))
    short = tmp_path / "short"
    short.write_bytes(b"0123")
    os.chmod(short, 0o600)
    with pytest.raises(BadInput, match="32 bytes"):
        envelope.load_key(str(short))


def test_max_privilege_specs():
    p = privilege.parse("unprivileged")
    assert (p.min_uid, p.min_gid, p.caps) == (1, 1, 0)
    p = privilege.parse("uid>=1000,caps=CAP_KILL,net_raw gid>=100")
    assert (p.min_uid, p.min_gid, p.caps) == (1000, 100, 1 << 5 | 1 << 13)
    assert privilege.parse("caps=none").caps == 0
    for bad in ("uid>1000", "caps=CAP_FLY", "root", ""):
        with pytest.raises(UsageError):
            privilege.parse(bad)


def test_max_privilege_check_names_the_field(tmp_path):
    write_demo_image(tmp_path / "a.img")
    with ImageReader(tmp_path / "a.img") as r:
        recs: dict = {}
        for kind, obj in r.records():
            if kind is not None:
                recs.setdefault(kind.name, []).append(obj)
    c = recs["creds"][0]
    task = next(t for t in recs["task"] if t.state != "Z")
    c.pid = c.tid = task.pid
    c.uids = [1000, 0, 1000, 1000]
    with pytest.raises(privilege.PrivilegeExceeded,
                       match=rf"pid {c.pid} \({task.comm}\).*: euid 0 exceeds --max-privilege "
                             r"uid>=1000"):
        privilege.check({"task": [task], "creds": [c]}, privilege.parse("uid>=1000"))
    c.uids = [1000] * 4
    c.cap_prm = c.cap_inh = c.cap_amb = 0
    c.cap_eff = 1 << 21
    with pytest.raises(privilege.PrivilegeExceeded, match="cap_eff CAP_SYS_ADMIN exceeds"):
        privilege.check({"task": [task], "creds": [c]}, privilege.parse("uid>=1000 caps=kill"))
    c.cap_eff = 1 << 5
    privilege.check({"task": [task], "creds": [c]}, privilege.parse("uid>=1000 caps=kill"))


def test_convert_encrypts_and_decrypts(tmp_path, capsys):
    from lxc_cr.cli import main
    plain, enc, back, key = (tmp_path / n for n in ("plain.img", "enc.img", "back.img", "k"))
    write_demo_image(plain)
    key.write_text(os.urandom(32).hex())
    os.chmod(key, 0o600)
    assert main(["convert", str(plain), str(enc), "--encrypt", str(key)]) == 0
    assert enc.read_bytes()[:8] == envelope.MAGIC
    assert main(["inspect", str(enc)]) == 2
    assert "the image is encrypted" in capsys.readouterr().err
    assert main(["inspect", str(enc), "--key", str(key)]) == 0
    assert main(["convert", str(enc), str(back), "--key", str(key)]) == 0
    assert back.read_bytes() == plain.read_bytes()      # convert recodes to identical bytes
