"""Fuzz the reader: mutated and truncated images always end in ImageError.

Every byte of a valid image is covered by a check (v3: the footer's crc, the record pack's
crc and zstd checksum, block crcs, zero alignment padding; v2: the header crc over its
padding too, record crcs, block crcs, index and trailer crcs, zero padding), so *every*
mutation must be refused, by ImageReader() or verify(); never another exception, a hang or
a huge allocation.  Records re-sealed in a pack with right checksums (what a forger could
do) must end in ImageError or decode.
"""

import os
import random
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lxc_cr.errors import ImageError
from lxc_cr.image import fields, kinds
from lxc_cr.image.reader import ImageReader
from lxc_cr.image.writer import ImageWriter

pytestmark = pytest.mark.unit

N_MUTATIONS = 10_000
TIME_LIMIT = 90


def small_image(path, compress):
    K = kinds.by_name
    with ImageWriter(path, source_name="9", compress=compress, created=1, kernel="k",
                     arch="x86_64") as w:
        w.add(K("ns"), dict(kind="uts", ino=4026531838, own=True))
        w.add(K("uts"), dict(hostname="fuzz", domainname=""))
        w.add(K("task"), dict(pid=1, ppid=0, pgid=1, sid=1, nspids=[1], host_pid=9,
                              comm="init", state="S", exit_code=0, exit_signal=17,
                              personality=0, umask=18, dumpable=1, no_new_privs=0,
                              child_subreaper=0, pdeath_signal=0, cwd="/", root="/"))
        ref = w.write_block([b"\0" * 600, bytes(range(200)) * 3])
        w.add(K("pages"), dict(pid=1, shmem_id=0, vaddr=0x1000, npages=1, block=ref))
        data = bytes(range(256)) * 2
        off = w.reserve_block(len(data))
        os.pwrite(w.fileno(), data, off)
        w.add(K("pages"), dict(pid=1, shmem_id=0, vaddr=0x2000, npages=1,
                               block=w.finish_block(off, len(data), zlib.crc32(data))))
        w.add(K("fd"), dict(pid=1, fd=0, kind="null", flags=2, cloexec=False, pos=0,
                            target="/dev/null", file_id=1))
        w.add_raw(0x7FF0, b"unknown")
    return path.read_bytes()


def records_image(path):
    """No blocks: one sample record of every kind, so mutations land in records."""
    with ImageWriter(path, source_name="r", created=2, kernel="k", arch="a") as w:
        for i, kind in enumerate(kinds.all_kinds()):
            if kind.name not in ("pages", "sigactions"):
                w.add(kind, fields.sample(fields.node(kind.struct), i))
    return path.read_bytes()


def read_everything(path):
    """What restore and inspect do: open, verify, decode every record, read every block."""
    with ImageReader(path) as r:
        r.verify()
        for kind, obj in r.records():
            if kind is not None and kind.name == "pages":
                data = r.read_block(obj.block)
                buf = bytearray(len(data))
                r.read_block_into(obj.block, buf)


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    op = rng.randrange(6)
    if op == 0:                                   # bit flips
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif op == 1:                                 # byte overwrites
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif op == 2:                                 # interesting values over a length/offset
        i = rng.randrange(len(b))
        val = rng.choice([0, 0xFF, 0x7F, 0x80, 0xFFFFFFFF, 2 ** 63, 2 ** 64 - 1, len(b)])
        n = rng.choice([1, 2, 4, 8])
        b[i:i + n] = (val % 2 ** (8 * n)).to_bytes(n, "little")
    elif op == 3:                                 # insert a range
        i = rng.randrange(len(b) + 1)
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif op == 4:                                 # delete a range
        i = rng.randrange(len(b))
        del b[i:i + rng.randint(1, 64)]
    else:                                         # duplicate a range elsewhere
        i, j = rng.randrange(len(b)), rng.randrange(len(b))
        n = rng.randint(1, 128)
        b[j:j + n] = b[i:i + n]
    return bytes(b)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    return [small_image(d / "raw.img", None), small_image(d / "zstd.img", "zstd"),
            records_image(d / "records.img")]


def _guard():
    def on_alarm(signum, frame):
        raise TimeoutError("reader hangs")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TIME_LIMIT)
    return old


def test_base_images_are_valid(images, tmp_path):
    for i, data in enumerate(images):
        p = tmp_path / f"{i}.img"
        p.write_bytes(data)
        read_everything(p)


def test_mutations_all_refused(images, tmp_path):
    rng = random.Random(0xC0FFEE)
    p = tmp_path / "m.img"
    old = _guard()
    t0 = time.monotonic()
    refused = 0
    try:
        done = 0
        while done < N_MUTATIONS:
            base = images[done % len(images)]
            data = mutate(rng, base)
            if data == base:
                continue
            done += 1
            p.write_bytes(data)
            try:
                read_everything(p)
            except ImageError as e:
                assert str(e).startswith(str(p) + ": "), str(e)
                refused += 1
                continue
            pytest.fail(f"mutation #{done} accepted: {len(data)} bytes "
                        f"(base {len(base)}), first difference at "
                        f"{next(i for i, (x, y) in enumerate(zip(data, base)) if x != y)}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert refused == N_MUTATIONS
    assert time.monotonic() - t0 < TIME_LIMIT


def test_every_truncation_refused(images, tmp_path):
    p = tmp_path / "t.img"
    old = _guard()
    try:
        for data in images:
            # every length near the ends, every 5th in between
            lengths = set(range(0, 700)) | set(range(len(data) - 700, len(data))) | \
                set(range(0, len(data), 5))
            for n in sorted(lengths):
                p.write_bytes(data[:n])
                with pytest.raises(ImageError) as ei:
                    read_everything(p)
                assert ei.value.offset is not None or n == 0
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_pack_contents_mutated_and_resealed(images, tmp_path):
    """The records of a v3 image are covered only by the record pack's checksums: mutate
    the decompressed pack, compress it again and give it a right crc32 and footer, as a
    forger would.  Reading must then end in ImageError or succeed (a mutation may make
    another valid record), never another exception, a hang or a huge allocation."""
    import zstandard

    from lxc_cr.image import format as F
    rng = random.Random(0xAC)
    p = tmp_path / "r.img"
    old = _guard()
    outcomes = {"refused": 0, "read": 0}
    try:
        for i in range(3000):
            base = images[i % len(images)]
            foot = F.Footer.parse(base[-F.FOOTER_SIZE:]).fields.value
            raw = zstandard.ZstdDecompressor().decompress(
                base[foot.pack_offset:foot.pack_offset + foot.pack_stored])
            mutated = mutate(rng, raw)
            pack = zstandard.ZstdCompressor().compress(mutated)
            p.write_bytes(base[:foot.pack_offset] + pack + F.build_footer(
                foot.pack_offset, len(pack), len(mutated), zlib.crc32(pack)))
            try:
                read_everything(p)
            except ImageError as e:
                assert str(e).startswith(str(p) + ": "), str(e)
                outcomes["refused"] += 1
            else:
                outcomes["read"] += 1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert outcomes["refused"] > 2000, outcomes


# --- mutations of real images made by the engine ---------------------------------------------
# tests/unit/data/real-sleep-vN.img: a running `sleep` dumped by `lxc-cr tree dump
# --leave-running --compress zstd` in format version N (regenerate the current one with
# tools/gen_fuzz_image.py; the older ones stay, so their readers stay fuzzed).

REAL = sorted((Path(__file__).resolve().parent / "data").glob("real-sleep-v*.img"))
N_REAL_MUTATIONS = 1_500


def test_real_images_cover_the_current_version():
    from lxc_cr.image import format as F
    assert [p.name for p in REAL] == ["real-sleep-v2.img",
                                      f"real-sleep-v{F.CURRENT_VERSION}.img"]


@pytest.fixture(scope="module", params=REAL, ids=[p.stem for p in REAL])
def real_image(request):
    return request.param.read_bytes()


def test_real_image_is_valid(real_image, tmp_path):
    p = tmp_path / "real.img"
    p.write_bytes(real_image)
    read_everything(p)
    with ImageReader(p) as r:
        assert str(r.header.source_kind) == "tree"
        assert any(kind is not None and kind.name == "pages" for kind, _ in r.records())


def test_real_image_mutations_all_refused(real_image, tmp_path):
    rng = random.Random(0x5EED)
    p = tmp_path / "m.img"
    old = _guard()
    try:
        done = 0
        while done < N_REAL_MUTATIONS:
            data = mutate(rng, real_image)
            if data == real_image:
                continue
            done += 1
            p.write_bytes(data)
            with pytest.raises(ImageError) as ei:
                read_everything(p)
            assert str(ei.value).startswith(str(p) + ": "), str(ei.value)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                      min_size=1, max_size=6))
def test_real_image_byte_edits_refused(real_image, tmp_path_factory, edits):
    """hypothesis: any set of byte overwrites anywhere in the real image is refused."""
    b = bytearray(real_image)
    for where, value in edits:
        b[int(where * len(b))] = value
    if bytes(b) == real_image:
        return
    p = tmp_path_factory.mktemp("hyp") / "e.img"
    p.write_bytes(bytes(b))
    with pytest.raises(ImageError):
        read_everything(p)


def test_real_image_truncations_refused(real_image, tmp_path):
    p = tmp_path / "t.img"
    n = len(real_image)
    lengths = set(range(0, 300)) | set(range(n - 300, n)) | set(range(0, n, 211))
    old = _guard()
    try:
        for k in sorted(lengths):
            p.write_bytes(real_image[:k])
            with pytest.raises(ImageError):
                read_everything(p)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def run_cli(*argv):
    return subprocess.run([sys.executable, "-m", "lxc_cr.cli", *map(str, argv)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)


def test_cli_on_mutated_real_images(real_image, tmp_path):
    """Through the command line, never a traceback: ``tree restore`` (which verifies every
    record, block and padding before it creates a process) exits 2 with one
    ``lxc-cr: error:`` line.  ``inspect`` decodes records without reading page data or
    padding: it exits 0 or 2, and 2 with one error line."""
    rng = random.Random(7)
    refused = 0
    for i in range(10):
        data = real_image[:rng.randrange(len(real_image))] if i % 3 == 0 else \
            mutate(rng, real_image)
        p = tmp_path / f"c{i}.img"
        p.write_bytes(data)
        for argv in (("tree", "restore", p), ("inspect", p), ("inspect", p, "--json")):
            r = run_cli(*argv)
            assert "Traceback" not in r.stderr, r.stderr
            if r.returncode == 0 and argv[0] == "inspect":
                continue
            assert r.returncode == 2, (argv, r.returncode, r.stderr)
            assert r.stderr.startswith("lxc-cr: error: ") and r.stderr.count("\n") == 1, r.stderr
            refused += argv[0] == "inspect"
    assert refused >= 8          # truncations and most mutations are caught by inspect too


def test_partial_image_never_looks_valid(tmp_path):
    """The writer's temporary file (``.NAME.tmp-PID``, no record pack or footer yet), as a
    killed dump leaves it, is refused by the reader and by ``inspect``, whatever its name."""
    import shutil

    from lxc_cr import intent
    path = tmp_path / "img"
    w = ImageWriter(path, source_name="9", created=1, kernel="k", arch="x86_64")
    w.open()
    w.add(kinds.by_name("uts"), dict(hostname="partial", domainname=""))
    w.write_block(b"x" * 5000)
    tmp = Path(w.tmp_path)
    assert intent.TEMP_RE.match(tmp.name) and tmp.name == f".img.tmp-{os.getpid()}"
    assert tmp.stat().st_mode & 0o777 == 0o600
    (tmp_path / "kept").mkdir()
    copies = [tmp_path / "kept" / tmp.name, tmp_path / "kept" / "renamed.img"]
    for c in copies:
        shutil.copyfile(tmp, c)
    w.abort()
    assert not tmp.exists() and not path.exists()
    for c in copies:
        with pytest.raises(ImageError) as ei:
            read_everything(c)
        assert "incomplete" in str(ei.value).lower(), str(ei.value)
        r = run_cli("inspect", c)
        assert r.returncode == 2 and "incomplete" in r.stderr.lower(), r.stderr
