"""ImageReader: open, check and decode an image; read its data blocks.

Every problem with the file (bad magic, empty, truncated, bad checksum, bad length, unknown
codec, index pointing outside the file, construct or zstd errors, huge lengths) ends in
``ImageError(path, what, offset)``.  Lengths are checked against the file size before
anything is read or allocated, and records are parsed from bytes already read, never from a
stream that could be asked for a corrupt length.
"""

from __future__ import annotations

import mmap
import os
import zlib

import construct as cs

from lxc_cr.errors import ImageError
from lxc_cr.image import format as F
from lxc_cr.image import kinds as K
from lxc_cr.image import migrate

_RUN_MAX = 1 << 20          # coalesce adjacent records into reads of up to this many bytes
_CHUNK = 1 << 22            # block reads for checksumming / decompression
_ZSTD_MAX_RATIO = 1 << 16   # a block never decompresses to more than this times its size
_OUT_CHUNK = 1 << 20
_PACK_MAX = 1 << 31         # a record pack decompresses to at most this (~200,000 tasks)
_DECODE_ERRORS = (cs.ConstructError, UnicodeError, ValueError, OverflowError, KeyError,
                  TypeError, IndexError)


class _Region:
    """A file-like view of [offset, offset+length) that checksums what is read."""

    def __init__(self, reader: "ImageReader", offset: int, length: int, checksum=zlib.crc32):
        self.reader, self.pos, self.left, self.crc = reader, offset, length, 0
        self.checksum = checksum

    def read(self, size: int = -1) -> bytes:
        n = self.left if size is None or size < 0 else min(size, self.left)
        if n <= 0:
            return b""
        data = self.reader.pread(n, self.pos)
        self.pos += n
        self.left -= n
        self.crc = self.checksum(data, self.crc)
        return data


class RawRecord(bytes):
    """The payload of a record whose tag is not in the kind table; keeps its tag."""

    tag: int

    def __new__(cls, tag: int, payload: bytes):
        obj = super().__new__(cls, payload)
        obj.tag = tag
        return obj

    def __repr__(self):
        return f"RawRecord(tag={self.tag:#06x}, {bytes(self)!r})"


_STRICT: dict[int, tuple] = {}      # tag -> (its struct, the strict one)


def _strict(kind: K.RecordKind) -> cs.Construct:
    """kind.struct that must consume the whole payload (else re-encoding would lose bytes)."""
    got = _STRICT.get(kind.tag)
    if got is None or got[0] is not kind.struct:
        got = _STRICT[kind.tag] = (kind.struct,
                                   cs.FocusedSeq("v", "v" / kind.struct, cs.Terminated))
    return got[1]


def _tag_arg(kind) -> int | None:
    """The tag of a kind argument: None (all), a RecordKind, a kind name or a tag number."""
    if kind is None or isinstance(kind, int):
        return kind
    if isinstance(kind, K.RecordKind):
        return kind.tag
    found = K.by_name(kind)
    if found is None:
        raise KeyError(f"unknown record kind {kind!r}")
    return found.tag


_REF_KEYS = {"offset", "length", "stored", "codec", "crc32"}
_HOLDS_REFS: dict[int, tuple] = {}      # tag -> (its struct, whether it can hold one)


def may_hold_block_refs(kind: K.RecordKind) -> bool:
    """Whether records of ``kind`` can hold a BlockRef at all (a struct with its fields
    somewhere in the declaration): most cannot, and walking every parsed record for them
    cost a dump of 100 processes about as much as decoding them."""
    got = _HOLDS_REFS.get(kind.tag)
    if got is None or got[0] is not kind.struct:
        from lxc_cr.image import fields
        try:
            holds = _node_holds_refs(fields.node(kind.struct))
        except TypeError:                 # a construct fields.node does not describe
            holds = True
        got = _HOLDS_REFS[kind.tag] = (kind.struct, holds)
    return got[1]


def _node_holds_refs(n) -> bool:
    if n.kind == "struct" and _REF_KEYS <= {name for name, _ in n.fields}:
        return True
    return any(_node_holds_refs(sub) for _, sub in n.fields) or \
        (n.item is not None and _node_holds_refs(n.item))


def block_refs(kind: K.RecordKind | None, obj):
    """Every BlockRef in a record ``obj`` of ``kind`` (None: an unknown record, raw bytes,
    which holds none); kinds that cannot hold one are not walked."""
    if kind is None or not may_hold_block_refs(kind):
        return ()
    return iter_block_refs(obj)


def iter_block_refs(obj):
    """Every BlockRef (as a Container) in a parsed record."""
    if isinstance(obj, dict):
        if all(k in obj for k in ("offset", "length", "stored", "codec", "crc32")):
            yield obj
            return
        for k, v in obj.items():
            if not k.startswith("_"):
                yield from iter_block_refs(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from iter_block_refs(v)


class ImageReader:
    """Read one image.  See the module docstring and docs/image-format.md."""

    def __init__(self, path, key: bytes | None = None):
        """``key``: the 32-byte key of an encrypted image (envelope.py); an encrypted
        image without it, or with another key, is refused."""
        self.path = os.fspath(path)
        self._fd = -1
        self._src = None          # an EncryptedSource: every read goes through it
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            self.size = os.fstat(self._fd).st_size
        except OSError as e:
            self.close()
            raise ImageError(self.path, f"cannot open: {e.strerror}") from None
        try:
            self._open_envelope(key)
            self._open()
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def fileno(self) -> int:
        return self._fd

    @property
    def encrypted(self) -> bool:
        return self._src is not None

    def _open_envelope(self, key: bytes | None) -> None:
        try:
            sealed = F.is_encrypted(self._fd)
        except OSError as e:
            raise self.error(f"read error: {e.strerror}", 0) from None
        if not sealed:
            if key is not None:
                raise self.error("a key was given, but the image is not encrypted", 0)
            return
        if key is None:
            raise self.error("the image is encrypted: give its key file (--key KEYFILE)", 0)
        from lxc_cr.image import envelope
        self._src = envelope.EncryptedSource(self._fd, key, self.path)
        self.size = self._src.size

    def error(self, what: str, offset: int | None = None, section: str | None = None):
        return ImageError(self.path, what, offset, section=section)

    def pread(self, length: int, offset: int) -> bytes:
        """Exactly ``length`` bytes at ``offset`` (checked against the file size first)."""
        if length < 0 or offset < 0 or offset + length > self.size:
            raise self.error(f"truncated: {length} bytes needed past end of file "
                             f"({self.size} bytes)", offset)
        if self._src is not None:
            try:
                return self._src.pread(length, offset)
            except OSError as e:
                raise self.error(f"read error: {e.strerror}", offset) from None
        parts = []
        got = 0
        try:
            while got < length:
                data = os.pread(self._fd, min(length - got, 1 << 30), offset + got)
                if not data:
                    raise self.error("truncated: file shrank while reading", offset + got)
                parts.append(data)
                got += len(data)
        except OSError as e:
            raise self.error(f"read error: {e.strerror}", offset + got) from None
        return parts[0] if len(parts) == 1 else b"".join(parts)

    # --- open: header, trailer, index --------------------------------------------------

    def _open(self) -> None:
        if self.size == 0:
            raise self.error("empty file, not an lxc-cr image", 0)
        self._pack = None           # v3: the decompressed record pack
        if self.size >= F.FOOTER_END_SIZE:
            tail = self.pread(F.FOOTER_END_SIZE, self.size - F.FOOTER_END_SIZE)
            if F.is_packed(tail):
                self._open_packed(F.FooterEnd.parse(tail).version)
                return
        pre = self.pread(min(self.size, F.PREAMBLE_SIZE), 0)
        if len(pre) < F.PREAMBLE_SIZE or pre[:8] != F.MAGIC:
            raise self.error("not an lxc-cr image, or an incomplete one (no lxc-cr magic at "
                             "its end or start)", 0)
        version = F.Preamble.parse(pre).version
        if version > F.CURRENT_VERSION:
            raise self.error(f"format version {version} is newer than supported "
                             f"{F.CURRENT_VERSION}", 8)
        fmt = F.FORMATS.get(version)
        if fmt is None:
            raise self.error(f"unknown format version {version}", 8)
        if fmt.packed:              # its header is in the pack: the footer is missing
            raise self.error("truncated or corrupt image: no footer", self.size)
        self.format = fmt
        self.data_start = F.HEADER_SIZE
        if self.size < F.HEADER_SIZE:
            raise self.error(f"truncated header ({self.size} of {F.HEADER_SIZE} bytes)",
                             self.size)
        raw = self.pread(F.HEADER_SIZE, 0)
        try:
            hdr = fmt.header.parse(raw)
        except cs.ChecksumError:
            raise self.error("header checksum mismatch", F.HEADER_CRC_OFFSET) from None
        except _DECODE_ERRORS as e:
            raise self.error(f"bad header: {_short(e)}", 0) from None
        fields = hdr.fields.value
        if fields.flags & F.FLAG_INCOMPLETE:
            raise self.error("image is incomplete (INCOMPLETE flag set: its writer did not "
                             "finish)", 10)
        if fields.flags & ~F.KNOWN_FLAGS:
            raise self.error(f"unknown header flags {fields.flags:#x}", 10)
        self.header = migrate.header_to_current(fields)
        self._read_index(fmt, fields.index_offset)

    def _open_packed(self, version: int) -> None:
        """v3: the footer, then the record pack it points to, decompressed whole (a
        busybox container's: 4 KiB stored, 40 KiB of records)."""
        at = self.size - F.FOOTER_END_SIZE
        if version > F.CURRENT_VERSION:
            raise self.error(f"format version {version} is newer than supported "
                             f"{F.CURRENT_VERSION}", at)
        fmt = F.FORMATS.get(version)
        if fmt is None or not fmt.packed:
            raise self.error(f"unknown format version {version} in the footer", at)
        end = self.size - F.FOOTER_SIZE
        if end < 0:
            raise self.error(f"truncated footer ({self.size} of {F.FOOTER_SIZE} bytes)", 0)
        try:
            f = F.Footer.parse(self.pread(F.FOOTER_SIZE, end)).fields.value
        except cs.ChecksumError:
            raise self.error("footer checksum mismatch", end) from None
        except _DECODE_ERRORS as e:
            raise self.error(f"bad footer: {_short(e)}", end) from None
        if f.flags & ~F.FOOTER_KNOWN_FLAGS:
            raise self.error(f"unknown footer flags {f.flags:#x}", end)
        off, stored, length = f.pack_offset, f.pack_stored, f.pack_length
        if off + stored != end or stored == 0:
            raise self.error(f"record pack ({off}+{stored}) does not end at the footer", end)
        if length > stored * _ZSTD_MAX_RATIO or length > _PACK_MAX:
            raise self.error(f"record pack length {length} is implausible for {stored} "
                             "stored bytes", off)
        data = self.pread(stored, off)
        if zlib.crc32(data) != f.pack_crc32:
            raise self.error("record pack checksum mismatch", off)
        import zstandard
        try:
            # the frame's own content size first: decompress() allocates that much
            declared = zstandard.frame_content_size(data)
            if declared != length:
                raise self.error(f"record pack holds {declared} bytes, the footer says "
                                 f"{length}", off)
            data = zstandard.ZstdDecompressor().decompress(data)
        except zstandard.ZstdError as e:
            raise self.error(f"bad record pack: {_short(e)}", off) from None
        if len(data) != length:
            raise self.error(f"record pack decompresses to {len(data)} bytes, expected "
                             f"{length}", off)
        try:
            head = F.PackHead.parse(data)
            entries = F.pack_entries(data, head.end)
        except _DECODE_ERRORS as e:
            raise self.error(f"bad record pack: {_short(e)}", off) from None
        self.format = fmt
        fields = cs.Container(version=version, flags=f.flags)
        fields.update((k, v) for k, v in head.header.items() if not k.startswith("_"))
        self.header = migrate.header_to_current(fields)
        self._pack = data
        self.pack_offset = off
        self.index = entries
        self.data_start, self.data_end = 0, off

    def _read_index(self, fmt: F.Format, header_index_offset: int) -> None:
        end = self.size - F.TRAILER_SIZE
        if end < F.HEADER_SIZE:
            raise self.error("truncated: no room for the trailer", self.size)
        raw = self.pread(F.TRAILER_SIZE, end)
        if raw[-len(F.END_MAGIC):] != F.END_MAGIC:
            raise self.error("truncated or corrupt image: no end marker", self.size - 8)
        try:
            tr = F.Trailer.parse(raw)
        except cs.ChecksumError:
            raise self.error("trailer checksum mismatch", end) from None
        except _DECODE_ERRORS:
            raise self.error("no trailer (truncated or corrupt image)", end) from None
        ioff, ilen = tr.fields.value.index_offset, tr.fields.value.index_length
        if ioff != header_index_offset:
            raise self.error(f"trailer index offset {ioff} differs from the header's "
                             f"{header_index_offset}", end)
        if ioff < F.HEADER_SIZE or ioff + ilen != end:
            raise self.error(f"index ({ioff}+{ilen}) does not end at the trailer", end)
        self.data_end = ioff
        try:
            idx = fmt.index.parse(self.pread(ilen, ioff))
        except cs.ChecksumError:
            raise self.error("index checksum mismatch", ioff) from None
        except _DECODE_ERRORS as e:
            raise self.error(f"bad index: {_short(e)}", ioff) from None
        entries = idx.entries.value
        if len(idx.entries.data) + 4 != ilen:
            raise self.error("index length mismatch", ioff)
        if not fmt.entry_has_length:
            entries = migrate.index_entries_v1_to_v2(entries, self._frame_length, ioff)
        prev_end = F.HEADER_SIZE
        for e in entries:
            if e.offset < prev_end or e.length < F.FRAME_OVERHEAD or \
                    e.offset + e.length > ioff:
                raise self.error(f"index entry (tag {e.tag:#06x}, offset {e.offset}, length "
                                 f"{e.length}) points outside the records area", ioff)
            prev_end = e.offset + e.length
        self.index = [(e.tag, e.offset, e.length) for e in entries]

    def _frame_length(self, offset: int, limit: int) -> int:
        """Length of the record frame at ``offset`` from its own length field (v1 index)."""
        if offset < F.HEADER_SIZE or offset + 6 > limit:
            raise self.error("index entry points outside the records area", offset)
        n = int.from_bytes(self.pread(4, offset + 2), "little") + F.FRAME_OVERHEAD
        if offset + n > limit:
            raise self.error(f"record length {n} runs past the records area", offset)
        return n

    # --- records -----------------------------------------------------------------------

    def _runs(self, entries):
        """Group adjacent index entries into single reads of at most _RUN_MAX bytes."""
        run: list = []
        for ent in entries:
            if run and (ent[1] != run[-1][1] + run[-1][2] or
                        ent[1] + ent[2] - run[0][1] > _RUN_MAX):
                yield run
                run = []
            run.append(ent)
        if run:
            yield run

    def raw_records(self, kind=None):
        """(tag, offset, payload bytes) of each record, checksums verified; index order.
        The offset is in the file, or for v3 in the decompressed record pack."""
        tag = _tag_arg(kind)
        entries = self.index if tag is None else [e for e in self.index if e[0] == tag]
        if self._pack is not None:
            pack = self._pack
            for tag, off, length in entries:
                yield tag, off, pack[off + F.PACK_RECORD_OVERHEAD:off + length]
            return
        for run in self._runs(entries):
            start = run[0][1]
            data = self.pread(run[-1][1] + run[-1][2] - start, start)
            for tag, off, length in run:
                frame = data[off - start:off - start + length]
                try:
                    ftag, payload, used = F.unframe_record(frame)
                except cs.ChecksumError:
                    raise self.error(f"record checksum mismatch (tag {tag:#06x})", off,
                                     _name(tag)) from None
                except _DECODE_ERRORS as e:
                    raise self.error(f"bad record frame: {_short(e)}", off, _name(tag)) from None
                if ftag != tag or used != length:
                    raise self.error(f"record frame (tag {ftag:#06x}, length {used}) does not "
                                     f"match its index entry (tag {tag:#06x}, length "
                                     f"{length})", off, _name(tag))
                yield tag, off, payload

    def decode(self, tag: int, payload: bytes, offset: int | None = None,
               canonical: bool = False, own: bool = False):
        """(kind, obj) of one record payload; unknown tags give (None, RawRecord).

        ``canonical``: also require that the record re-encodes to the same bytes (a Flag
        byte other than 0/1, an over-long varint would not), so inspect and convert lose
        nothing; verify() asks for it.  ``own``: this process wrote the payload a moment
        ago, so a hot kind may be parsed by compiled code (kinds.hot_call).
        """
        kind = K.by_tag(tag)
        if kind is None:
            return None, RawRecord(tag, payload)
        where = ""
        if self._pack is not None and offset is not None:   # say where the pack is
            where, offset = f" (at {offset} in the record pack)", self.pack_offset
        strict = _strict(kind)
        try:
            obj = K.hot_call(("parse", tag), strict, "parse", payload) if own else \
                strict.parse(payload)
            if canonical and kind.struct.build(obj) != payload:
                raise self.error(f"{kind.name} record{where} is not canonically encoded",
                                 offset, kind.name)
        except _DECODE_ERRORS as e:
            raise self.error(f"bad {kind.name} record{where}: {_short(e)}", offset,
                             kind.name) from None
        return kind, migrate.record_to_current(kind, obj, self.format.version)

    def records(self, kind=None):
        """(kind, obj) of every record (or only of ``kind``: RecordKind, name or tag number)."""
        for tag, off, payload in self.raw_records(kind):
            yield self.decode(tag, payload, off)

    def records_with_offsets(self, kind=None):
        """(offset, kind, obj) of every record, in file order."""
        for tag, off, payload in self.raw_records(kind):
            k, obj = self.decode(tag, payload, off)
            yield off, k, obj

    def verify(self, blocks: bool = True, canonical: bool = True, own: bool = False) -> list:
        """Check every byte of the file: every record (checksum, decoding), every data block
        (bounds, crc32, codec, decompressed length), and that whatever lies between them
        (alignment padding) is zero.  Restore calls this before creating any process.

        ``blocks=False`` (a dump checking the image it has just written) checks every
        record, the index and every block's bounds, but not the block contents again: their
        crc32 was computed from the very buffers written (pwritev's count checked, fsynced),
        and reading them back would only read the page cache.

        ``canonical=False`` decodes every record but does not encode it again to compare.
        The dump checks records this very process has just encoded from the same
        declarations (that would compare the encoder with itself); restore uses the
        decoded values, and a record that would re-encode differently (a Flag byte of 2)
        means the same to it.  inspect and convert keep the check.

        ``own=True`` (the dump again): the records were written by this process a moment
        ago and are parsed by compiled code once their kind is hot (kinds.hot_call).  Never
        for an image read from disk: a compiled parser trusts counts and lengths.

        An encrypted image is authenticated whole first (every chunk of the envelope,
        blocks included), whatever ``blocks`` says: nobody's edit gets past it.

        Returns every record as ``records()`` gives it, (kind, obj) in file order: restore
        takes them from here instead of decoding each record a second time."""
        if self._src is not None:
            self._src.authenticate()
        seen = {}
        decoded = []
        for tag, off, payload in self.raw_records():
            kind, obj = self.decode(tag, payload, off, canonical=canonical, own=own)
            decoded.append((kind, obj))
            for ref in block_refs(kind, obj):
                if not ref["stored"] and not (ref["offset"] or ref["length"] or
                                              ref["codec"] or ref["crc32"]):
                    continue        # the all-zero reference: the empty block, no bytes
                key = (ref["offset"], ref["stored"])
                old = seen.get(key)
                if old is not None:
                    if (old["crc32"], old["codec"], old["length"]) != \
                            (ref["crc32"], ref["codec"], ref["length"]):
                        raise self.error("two references to one block disagree",
                                         ref["offset"], "block")
                    continue
                seen[key] = ref
                self._check_ref(ref)
                if not blocks:
                    continue
                if F.codec_kind(ref["codec"]) == F.CODEC_RAW:
                    self._stored_crc(ref)
                else:
                    for _ in self._zstd_chunks(ref):
                        pass
        spans = [] if self._pack is not None else \
            [(off, length, "record") for _tag, off, length in self.index]
        spans += [(off, stored, "block") for off, stored in seen if stored]
        self._check_gaps(sorted(spans))
        return decoded

    def _check_gaps(self, spans) -> None:
        """Spans must not overlap; the bytes between them must be zero."""
        pos = self.data_start
        end = "index" if self._pack is None else "record pack"
        for off, length, what in spans + [(self.data_end, 0, end)]:
            if off < pos:
                raise self.error(f"{what} at offset {off} overlaps the data before it", off)
            while pos < off:
                n = min(off - pos, _CHUNK)
                data = self.pread(n, pos)
                if data.count(0) != n:
                    first = pos + n - len(data.lstrip(b"\0"))
                    raise self.error("non-zero byte in padding", first)
                pos += n
            pos = off + length

    # --- blocks ------------------------------------------------------------------------

    def _check_ref(self, ref) -> None:
        off, length, stored, codec = ref["offset"], ref["length"], ref["stored"], ref["codec"]
        if not (off or length or stored or codec or ref["crc32"]):
            return                  # the all-zero reference: an empty block, no bytes
        kind = F.codec_kind(codec)
        if kind not in F.CODECS:
            raise self.error(f"unknown block codec {codec}", off, "block")
        if off % F.BLOCK_ALIGN or off < self.data_start or off + stored > self.data_end:
            raise self.error(f"block (offset {off}, {stored} bytes) outside the data area",
                             off, "block")
        if kind == F.CODEC_RAW and stored != length:
            raise self.error(f"raw block stored length {stored} differs from length {length}",
                             off, "block")
        if kind == F.CODEC_ZSTD and length > max(stored, 1) * _ZSTD_MAX_RATIO:
            raise self.error(f"zstd block length {length} is implausible for {stored} stored "
                             "bytes", off, "block")

    def _stored_crc(self, ref, chunk_cb=None) -> None:
        off, stored = ref["offset"], ref["stored"]
        checksum = F.block_crc(ref["codec"])
        crc = 0
        pos = 0
        while pos < stored:
            data = self.pread(min(_CHUNK, stored - pos), off + pos)
            crc = checksum(data, crc)
            if chunk_cb:
                chunk_cb(data)
            pos += len(data)
        if crc != ref["crc32"]:
            raise self.error(f"block checksum mismatch ({crc:#010x}, expected "
                             f"{ref['crc32']:#010x})", off, "block")

    def _zstd_chunks(self, ref):
        """Decompressed chunks (at most _OUT_CHUNK bytes each) of a zstd block; the stored
        crc32 is computed on the way and checked at the end."""
        import zstandard
        src = _Region(self, ref["offset"], ref["stored"], F.block_crc(ref["codec"]))
        total = 0
        try:
            for out in zstandard.ZstdDecompressor().read_to_iter(
                    src, read_size=1 << 17, write_size=_OUT_CHUNK):
                total += len(out)
                if total > ref["length"]:
                    break
                yield out
        except zstandard.ZstdError as e:
            self._finish_crc(src, ref)       # a corrupt block: say so rather than "zstd"
            raise self.error(f"zstd block: {e}", ref["offset"], "block") from None
        self._finish_crc(src, ref)
        if total != ref["length"]:
            raise self.error(f"zstd block decompresses to {'more than ' if total > ref['length'] else ''}"
                             f"{total} bytes, expected {ref['length']}", ref["offset"], "block")

    def _finish_crc(self, src: _Region, ref) -> None:
        while src.read(_CHUNK):   # the rest of the stored bytes, for the crc
            pass
        if src.crc != ref["crc32"]:
            raise self.error(f"block checksum mismatch ({src.crc:#010x}, expected "
                             f"{ref['crc32']:#010x})", ref["offset"], "block")

    def read_block(self, ref, check: bool = True) -> bytes:
        """The (decompressed) bytes of the block ``ref`` (a BlockRef Container or dict)."""
        self._check_ref(ref)
        if F.codec_kind(ref["codec"]) == F.CODEC_RAW:
            data = self.pread(ref["stored"], ref["offset"])
            if check and F.block_crc(ref["codec"])(data, 0) != ref["crc32"]:
                raise self.error("block checksum mismatch", ref["offset"], "block")
            return data
        return b"".join(self._zstd_chunks(ref))

    def map_block(self, ref, check: bool = True) -> "MappedBlock | None":
        """A raw block's bytes mapped read-only from the image file (the page cache, no
        copy), its checksum checked; None where a block cannot be mapped: an encrypted
        image, a compressed block, an unaligned offset, a file that cannot be mapped.  Close
        the result when done."""
        self._check_ref(ref)
        if (self._src is not None or F.codec_kind(ref["codec"]) != F.CODEC_RAW
                or ref["offset"] % mmap.ALLOCATIONGRANULARITY or not ref["length"]):
            return None
        try:
            m = MappedBlock(self._fd, ref["offset"], ref["length"])
        except OSError:
            return None           # a file system without mmap (some FUSE ones): read it
        if check and F.block_crc(ref["codec"])(m.view, 0) != ref["crc32"]:
            m.close()
            raise self.error("block checksum mismatch", ref["offset"], "block")
        return m

    def read_block_into(self, ref, buf, check: bool = True) -> int:
        """Read the block into the writable buffer ``buf`` (raw: os.preadv straight in)."""
        self._check_ref(ref)
        mv = memoryview(buf).cast("B")
        length = ref["length"]
        if mv.nbytes < length:
            raise ValueError(f"buffer of {mv.nbytes} bytes for a block of {length}")
        mv = mv[:length]
        raw = F.codec_kind(ref["codec"]) == F.CODEC_RAW
        checksum = F.block_crc(ref["codec"])
        if raw and self._src is not None:
            mv[:] = self.pread(length, ref["offset"])
            if check and checksum(mv, 0) != ref["crc32"]:
                raise self.error("block checksum mismatch", ref["offset"], "block")
            return length
        if raw:
            got = 0
            try:
                while got < length:
                    n = os.preadv(self._fd, [mv[got:]], ref["offset"] + got)
                    if n <= 0:
                        raise self.error("truncated block", ref["offset"] + got, "block")
                    got += n
            except OSError as e:
                raise self.error(f"read error: {e.strerror}", ref["offset"], "block") from None
            if check and checksum(mv, 0) != ref["crc32"]:
                raise self.error("block checksum mismatch", ref["offset"], "block")
            return length
        pos = 0
        for out in self._zstd_chunks(ref):
            mv[pos:pos + len(out)] = out
            pos += len(out)
        return length


class MappedBlock:
    """``view``: a read-only memoryview of ``length`` bytes of ``fd`` at ``offset`` (mmap).
    The file was opened and its size checked by ImageReader; an image truncated by someone
    else while mapped would fault (SIGBUS), as for any tool that maps its input."""

    def __init__(self, fd: int, offset: int, length: int):
        self._map = mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ, offset=offset)
        self._map.madvise(mmap.MADV_SEQUENTIAL)
        self.view = memoryview(self._map)

    def close(self) -> None:
        if self._map is not None:
            self.view.release()
            self._map.close()
            self._map = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _name(tag: int) -> str:
    k = K.by_tag(tag)
    return k.name if k else f"tag {tag:#06x}"


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[-1] if text else type(e).__name__)[:200]
