"""Fuzz the reader: mutated and truncated images always end in ImageError.

Every byte of a valid image is covered by a check (header crc over its padding too, record
crcs, block crcs, index and trailer crcs, zero alignment padding), so *every* mutation must
be refused, by ImageReader() or verify(); never another exception, a hang or a huge
allocation.
"""

import os
import random
import signal
import time
import zlib

import pytest

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
