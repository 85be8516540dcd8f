"""ImageWriter: stream records and data blocks into one image file, commit atomically.

The file is written as ``.NAME.tmp-PID`` in the target directory (mode 0600 from creation).
Data blocks go straight to the file with ``os.pwritev`` at 4 KiB aligned offsets from 0,
never joined or held; records are kept in memory (a 100-process tree's: about 1 MiB).
Leaving the ``with`` block normally compresses the records into the record pack, writes it
and the footer after the last block, fsyncs the file, renames it to PATH and fsyncs the
directory.  Until then the file has no footer, and no reader takes it for an image.
Leaving it by an exception unlinks the temporary file: no file named PATH is created or
modified.
"""

from __future__ import annotations

import os
import struct
import time
import zlib

import construct as cs

from lxc_cr.errors import ImageError, KernelError, OperationFailed
from lxc_cr.image import format as F
from lxc_cr.image.kinds import RecordKind

# zstd level of the record pack: 9 takes a busybox container's 40 KiB in 1 ms (level 3:
# 0.5 ms, 5 % larger).  Past 1 MiB of records (pipe and socket buffers and message queues
# are held in records) level 3, which compresses about five times as fast.
_PACK_LEVEL, _PACK_LEVEL_LARGE, _PACK_LARGE = 9, 3, 1 << 20
_WRITEBACK_AT = 64 << 20
_IOV_MAX = 1024


def _buffers(data) -> list[memoryview]:
    if isinstance(data, (list, tuple)):
        views = [memoryview(b) for b in data]
    else:
        views = [memoryview(data)]
    return [v if (v.format == "B" and v.ndim == 1 and v.c_contiguous) else v.cast("B")
            for v in views]


def pwritev_all(fd: int, views: list[memoryview], offset: int) -> int:
    """Write every buffer at ``offset`` (handles IOV_MAX and short writes); returns bytes."""
    total = 0
    i = 0
    views = [v for v in views if v.nbytes]
    while i < len(views):
        batch = views[i:i + _IOV_MAX]
        n = os.pwritev(fd, batch, offset)
        offset += n
        total += n
        # skip fully written buffers, trim a partly written one
        while n and i < len(views):
            if n >= views[i].nbytes:
                n -= views[i].nbytes
                i += 1
            else:
                views[i] = views[i][n:]
                n = 0
    return total


class ImageWriter:
    """Write one image.  See the module docstring and docs/image-format.md."""

    def __init__(self, path, source_kind: str = "tree", source_name: str = "",
                 compress: str | None = None, level: int = 3, xcr0: int = 0,
                 vdso_size: int = 0, vdso_hash: bytes = b"\0" * 32,
                 kernel: str | None = None, arch: str | None = None,
                 created: int | None = None, key: bytes | None = None):
        self.path = os.fspath(path)
        self.key = key          # encrypt the committed image (envelope.py) with this key
        if source_kind not in F.SOURCE_KINDS:
            raise ImageError(self.path, f"unknown source kind {source_kind!r}")
        if compress not in (None, "zstd"):
            raise ImageError(self.path, f"unknown compression {compress!r}")
        if len(vdso_hash) != 32:
            raise ImageError(self.path, "vdso_hash must be 32 bytes")
        u = os.uname()
        self.fields = dict(
            created=time.time_ns() if created is None else created,
            kernel=u.release if kernel is None else kernel,
            arch=u.machine if arch is None else arch,
            xcr0=xcr0, vdso_size=vdso_size, vdso_hash=bytes(vdso_hash),
            source_kind=source_kind, source_name=str(source_name))
        self.compress = compress
        self.level = level
        self._cctx = None
        if compress == "zstd":
            import zstandard
            self._cctx = zstandard.ZstdCompressor(level=level)
        d, base = os.path.split(os.path.abspath(self.path))
        self._dir = d
        self.tmp_path = os.path.join(d, f".{base}.tmp-{os.getpid()}")
        self._fd = -1
        self._pos = 0                     # end of everything written or reserved
        # start of what has not been handed to writeback yet (None: no writeback hints)
        self._wb_from = None if key is not None else 0
        try:                              # the pack starts with the header fields
            self._records = [F.HeaderFieldsV3.build(self.fields)]
        except Exception as e:  # construct errors: a field too long for its length prefix
            raise ImageError(self.path, f"header fields do not fit: {e}") from None
        self.stats = dict(records=0, record_bytes=0, blocks=0, block_bytes=0, stored_bytes=0,
                          pack_bytes=0)

    # --- context manager -----------------------------------------------------------------

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, et, ev, tb):
        if et is None:
            self.commit()
        else:
            self.abort()
        return False

    def _oserror(self, op: str, e: OSError):
        return OperationFailed(f"{self.path}: {op}: {e.strerror or e}", path=self.path,
                               errno=e.errno, op=op)

    def open(self) -> None:
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            try:
                self._fd = os.open(self.tmp_path, flags, 0o600)
            except FileExistsError:   # left by a crashed writer with our pid
                os.unlink(self.tmp_path)
                self._fd = os.open(self.tmp_path, flags, 0o600)
            os.fchmod(self._fd, 0o600)
            if self.key is not None:
                # the plain image lives only behind our fd: no name, gone when we are
                os.unlink(self.tmp_path)
        except OSError as e:
            self.abort()
            raise self._oserror("create", e) from None

    def fileno(self) -> int:
        return self._fd

    def _pwrite(self, data, offset: int) -> None:
        pwritev_all(self._fd, [memoryview(data)], offset)

    # --- records -------------------------------------------------------------------------

    def add(self, kind: RecordKind | None, obj) -> None:
        """Append one record of ``kind`` (obj: dict/Container for kind.struct).

        ``kind=None`` with a RawRecord (from ImageReader.records) re-adds an unknown record.
        """
        if kind is None:
            self.add_raw(obj.tag, bytes(obj))
            return
        try:
            payload = kind.build(obj)
        except (cs.ConstructError, TypeError, ValueError, KeyError, UnicodeError,
                struct.error) as e:            # struct.error: from a compiled kind
            why = (str(e).strip().splitlines() or [type(e).__name__])[-1]
            raise OperationFailed(f"{self.path}: cannot encode a {kind.name} record: {why}",
                                  path=self.path, section=kind.name) from e
        self.add_raw(kind.tag, payload)

    def add_raw(self, tag: int, payload: bytes) -> None:
        """Append one record whose payload is already built."""
        rec = F.pack_record(tag, payload)
        self._records.append(rec)
        self.stats["records"] += 1
        self.stats["record_bytes"] += len(rec)

    def _start_block(self) -> int:
        return F.align_up(self._pos)

    # --- blocks --------------------------------------------------------------------------

    def write_block(self, data) -> dict:
        """Write a data block (bytes-like or a list of them, not joined); returns a BlockRef."""
        views = _buffers(data)
        length = sum(v.nbytes for v in views)
        crc = 0
        codec = F.CODEC_RAW
        checksum = F.block_crc(F.CODEC_CRC32C)
        stored_views = views
        if self._cctx is not None and length:
            co = self._cctx.compressobj(size=length)
            chunks = [co.compress(v) for v in views]
            chunks.append(co.flush())
            chunks = [c for c in chunks if c]
            if sum(len(c) for c in chunks) < length:
                codec = F.CODEC_ZSTD
                stored_views = [memoryview(c) for c in chunks]
        for v in stored_views:
            crc = checksum(v, crc)
        stored = sum(v.nbytes for v in stored_views)
        off = self._start_block()
        try:
            pwritev_all(self._fd, stored_views, off)
        except OSError as e:
            raise self._oserror("write block", e) from None
        self._pos = off + stored
        self._count_block(length, stored)
        self._writeback()
        return dict(offset=off, length=length, stored=stored, codec=codec | F.CODEC_CRC32C,
                    crc32=crc)

    def reserve_block(self, length: int) -> int:
        """Reserve an aligned region for ``length`` raw bytes the caller writes to fileno()."""
        if length < 0:
            raise ValueError("negative block length")
        off = self._start_block()
        self._pos = off + length
        return off

    def finish_block(self, offset: int, length: int, crc32: int) -> dict:
        """The BlockRef of a reserved block the caller has written (codec raw)."""
        self._count_block(length, length)
        return dict(offset=offset, length=length, stored=length, codec=F.CODEC_RAW, crc32=crc32)

    def copy_block(self, src_fd, ref) -> dict:
        """Copy a block's stored bytes from another image as they are (same codec, crc).

        ``src_fd``: a file descriptor, or an ImageReader (which decrypts an encrypted one)."""
        read = getattr(src_fd, "pread", None) or (lambda n, off: os.pread(src_fd, n, off))
        if not any(ref[k] for k in ("offset", "length", "stored", "codec", "crc32")):
            return dict(offset=0, length=0, stored=0, codec=0, crc32=0)    # the empty block
        stored = ref["stored"]
        off = self.reserve_block(stored)
        src, dst, left = ref["offset"], off, stored
        try:
            while left:
                n = min(left, 1 << 24)
                data = read(n, src)
                if not data:
                    raise ImageError(self.path, "source block truncated", src)
                self._pwrite(data, dst)
                src += len(data)
                dst += len(data)
                left -= len(data)
        except OSError as e:
            raise self._oserror("copy block", e) from None
        self._count_block(ref["length"], stored)
        return dict(offset=off, length=ref["length"], stored=stored, codec=ref["codec"],
                    crc32=ref["crc32"])

    def _writeback(self) -> None:
        """Start writing the blocks written so far to disk while the dump goes on, every
        _WRITEBACK_AT bytes, so that the fsync of commit() has little left to wait for (a
        1 GiB dump: 0.87 s instead of 1.26 s, benchmarks/).  Hints every 8 MiB slowed the
        writes of many small blocks (655 MiB in 2 MiB blocks: 0.9-1.6 s instead of 0.66-0.71 s
        with 64 MiB).  Not for an image that will be encrypted: its plain bytes live in an
        unlinked file and should not reach the disk."""
        if self._wb_from is None or self._pos - self._wb_from < _WRITEBACK_AT:
            return
        from lxc_cr.kernel import sys as ksys
        try:
            ksys.start_writeback(self._fd, self._wb_from, self._pos - self._wb_from)
        except KernelError:
            self._wb_from = None          # a hint only; commit() still fsyncs
            return
        self._wb_from = self._pos

    def _count_block(self, length: int, stored: int) -> None:
        self.stats["blocks"] += 1
        self.stats["block_bytes"] += length
        self.stats["stored_bytes"] += stored

    # --- commit / abort ------------------------------------------------------------------

    def commit(self) -> None:
        try:
            import zstandard
            raw = b"".join(self._records)
            level = _PACK_LEVEL if len(raw) <= _PACK_LARGE else _PACK_LEVEL_LARGE
            pack = zstandard.ZstdCompressor(level=level, write_checksum=True).compress(raw)
            off = self._pos
            footer = F.build_footer(off, len(pack), len(raw), zlib.crc32(pack))
            self._pwrite(pack + footer, off)
            end = off + len(pack) + len(footer)
            os.ftruncate(self._fd, end)
            self.stats["pack_bytes"] = len(pack)
            if self.key is not None:
                self._seal(end)
            else:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1
                os.rename(self.tmp_path, self.path)
        except OSError as e:
            self.abort()
            raise self._oserror("commit", e) from None
        except BaseException:
            self.abort()
            raise
        try:
            dfd = os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as e:
            raise self._oserror("fsync directory", e) from None

    def _seal(self, length: int) -> None:
        """Encrypt the plain image (behind self._fd) into PATH, atomically."""
        from lxc_cr.image import envelope
        fd = os.open(self.tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            envelope.seal(self._fd, length, fd, self.key)
            os.fsync(fd)
            os.rename(self.tmp_path, self.path)
        finally:
            os.close(fd)
        os.close(self._fd)
        self._fd = -1

    def abort(self) -> None:
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = -1
        try:
            os.unlink(self.tmp_path)
        except FileNotFoundError:
            pass
