"""The image file layout, declared once in construct (used to parse, build and document it).

One file per checkpoint::

    offset 0            data blocks     4 KiB aligned, referenced by BlockRef from records
    pack_offset         record pack     one zstd frame: the header fields, then every
                                        record (tag u16, length u32, payload), in order
    end - FOOTER_SIZE   footer          version, flags, where the pack lies, crc32s, magic

The writer writes the file as ``.NAME.tmp-PID`` and adds the pack and the footer last,
just before fsync and rename: a file without a footer is not an image.  The pack is
compressed because records are mostly zeros and repeats (64 signal actions, an xsave area
per thread): a busybox container's 40 KiB of records are a 4 KiB pack.  With no header
in front, the first block starts at offset 0 and the metadata costs only the pack and the
footer (issue #11: image <= anonymous memory + 2 %).

Format versions (one dispatch table, ``FORMATS``; migrations in ``migrate.py``):

* v1: a HEADER_SIZE header at offset 0 (magic, version, flags, fields, crc32); records
  framed as tag u16, length u32, payload, crc32, between the blocks; an index of (tag,
  offset) of every record, then a trailer (index offset and length, crc32, end magic).
* v2: as v1; the header gains xcr0, vdso_size and vdso_hash, and index entries the record
  length (tag, offset, length).
* v3 (current): the layout above.  Readers tell it by the magic in its last 8 bytes (v1
  and v2 end with END_MAGIC and start with MAGIC).

v1 and v2 images carry the INCOMPLETE header flag while being written; readers refuse an
image that has it set.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass

import construct as cs
from construct import this

from lxc_cr.image.packed import PackedPrefixedArray

MAGIC = b"LXCCRIMG"
END_MAGIC = b"LXCCREND"
ENVELOPE_MAGIC = b"LXCCRENC"     # an encrypted image (envelope.py) starts with it instead
CURRENT_VERSION = 3
HEADER_SIZE = 512
BLOCK_ALIGN = 4096

FLAG_INCOMPLETE = 0x1
KNOWN_FLAGS = FLAG_INCOMPLETE
FLAG_NAMES = {FLAG_INCOMPLETE: "INCOMPLETE"}

CODEC_RAW = 0
CODEC_ZSTD = 1
CODECS = {CODEC_RAW: "raw", CODEC_ZSTD: "zstd"}
CODEC_BY_NAME = {v: k for k, v in CODECS.items()}
# A flag in a block's codec byte: its ``crc32`` field holds CRC-32C (Castagnoli, computed
# by the CPU's crc32 instruction, several times faster than zlib's CRC-32), not CRC-32.
# The writer sets it on every block it checksums itself; blocks without it (older images,
# blocks written through reserve/finish_block) keep CRC-32.
CODEC_CRC32C = 0x80
CODEC_FLAGS = CODEC_CRC32C


def codec_kind(codec: int) -> int:
    """The compression of a block's codec byte (its flags masked off)."""
    return codec & ~CODEC_FLAGS


def block_crc(codec: int):
    """The checksum function of a block: f(data, running value) -> value."""
    if codec & CODEC_CRC32C:
        from lxc_cr.lightimport import submodule
        return submodule("crc32c", "_crc32c").crc32c
    return zlib.crc32

SOURCE_KINDS = {"tree": 0, "lxc": 1, "libvirt": 2}
SourceKind = cs.Enum(cs.Int8ul, **SOURCE_KINDS)


def _crc(data: bytes) -> int:
    return zlib.crc32(data)


def align_up(n: int, a: int = BLOCK_ALIGN) -> int:
    return (n + a - 1) // a * a


# --- header -----------------------------------------------------------------------------

# Read first, whatever the version: decides which header layout follows.
Preamble = cs.Struct(
    "magic" / cs.Bytes(8),
    "version" / cs.Int16ul,
)
PREAMBLE_SIZE = Preamble.sizeof()

# The header fields, in groups that the versions share (each group in this order).
_PREFIX = ("magic" / cs.Const(MAGIC), "version" / cs.Int16ul,
           "flags" / cs.Int32ul)                 # bit 0 INCOMPLETE (v1, v2)
_HOST = ("created" / cs.Int64ul,                      # unix time, ns
         "kernel" / cs.PascalString(cs.Int8ul, "utf8"),   # uname -r of the dumping host
         "arch" / cs.PascalString(cs.Int8ul, "utf8"))     # uname -m, e.g. x86_64
_CPU = ("xcr0" / cs.Int64ul,                         # XCR0 of the dumping CPU (xsave features)
        "vdso_size" / cs.Int64ul,
        "vdso_hash" / cs.Bytes(32))                  # sha256 of the dumping host's vdso
_SOURCE = ("source_kind" / SourceKind, "source_name" / cs.PascalString(cs.Int16ul, "utf8"))
_INDEX = ("index_offset" / cs.Int64ul,)             # 0 until the commit (v1, v2)

HeaderFieldsV1 = cs.Struct(*_PREFIX, *_HOST, *_SOURCE, *_INDEX)
HeaderFieldsV2 = cs.Struct(*_PREFIX, *_HOST, *_CPU, *_SOURCE, *_INDEX)


def _header(fields: cs.Construct) -> cs.Construct:
    # The fields, zero padded to HEADER_SIZE - 4, then the crc32 of those HEADER_SIZE - 4 bytes.
    return cs.Struct(
        "fields" / cs.RawCopy(cs.FixedSized(HEADER_SIZE - 4, fields)),
        "crc32" / cs.Checksum(cs.Int32ul, _crc, this.fields.data),
    )


HeaderV1 = _header(HeaderFieldsV1)
HeaderV2 = _header(HeaderFieldsV2)
HEADER_CRC_OFFSET = HEADER_SIZE - 4


def is_encrypted(fd: int) -> bool:
    """Whether the file is an envelope (without importing envelope.py): it starts with
    the envelope's magic.  A v3 image starts with a process's memory, which may hold those
    8 bytes too, so a file that ends as a v3 image does is a plain one (an envelope ends
    with an AES-GCM tag)."""
    if os.pread(fd, len(ENVELOPE_MAGIC), 0) != ENVELOPE_MAGIC:
        return False
    size = os.fstat(fd).st_size
    return size < len(MAGIC) or not is_packed(os.pread(fd, len(MAGIC), size - len(MAGIC)))


# --- records ----------------------------------------------------------------------------

RecordFrame = cs.Struct(
    "body" / cs.RawCopy(cs.Struct(
        "tag" / cs.Int16ul,
        "payload" / cs.Prefixed(cs.Int32ul, cs.GreedyBytes),   # the kind's struct, built
    )),
    "crc32" / cs.Checksum(cs.Int32ul, _crc, this.body.data),   # of tag, length and payload
)
FRAME_OVERHEAD = 2 + 4 + 4


# RecordFrame is the declaration (and the docs) of a v1/v2 record; the reader checks every
# such frame with unframe_record(), which does with struct what RecordFrame.parse does
# (test_image_rw holds it to that): 20-25 us a frame through construct.
_FRAME_HEAD = struct.Struct("<HI")
_FRAME_CRC = struct.Struct("<I")


def unframe_record(frame) -> tuple[int, bytes, int]:
    """(tag, payload, bytes used) of the record frame at the start of ``frame``, as
    RecordFrame.parse finds them (bytes after the frame are not looked at); StreamError
    for a frame cut short, ChecksumError for a crc32 that does not match."""
    if len(frame) < _FRAME_HEAD.size:
        raise cs.StreamError(f"stream read less than specified amount, expected "
                             f"{_FRAME_HEAD.size}, found {len(frame)}")
    tag, length = _FRAME_HEAD.unpack_from(frame)
    end = _FRAME_HEAD.size + length
    if len(frame) < end + _FRAME_CRC.size:
        raise cs.StreamError(f"stream read less than specified amount, expected "
                             f"{end + _FRAME_CRC.size}, found {len(frame)}")
    body = bytes(frame[:end])
    (crc,) = _FRAME_CRC.unpack_from(frame, end)
    if crc != zlib.crc32(body):
        raise cs.ChecksumError(f"wrong checksum, read {crc:#x}, computed "
                               f"{zlib.crc32(body):#x}")
    return tag, body[_FRAME_HEAD.size:], end + _FRAME_CRC.size


# --- index and trailer --------------------------------------------------------------------

IndexEntryV1 = cs.Struct(
    "tag" / cs.Int16ul,
    "offset" / cs.Int64ul,
)
IndexEntryV2 = cs.Struct(
    "tag" / cs.Int16ul,
    "offset" / cs.Int64ul,        # of the record frame
    "length" / cs.Int32ul,        # of the whole frame
)


def _index(entry: cs.Construct) -> cs.Construct:
    return cs.Struct(
        "entries" / cs.RawCopy(PackedPrefixedArray(cs.Int32ul, entry)),
        "crc32" / cs.Checksum(cs.Int32ul, _crc, this.entries.data),
    )


IndexV1 = _index(IndexEntryV1)
IndexV2 = _index(IndexEntryV2)

Trailer = cs.Struct(
    "fields" / cs.RawCopy(cs.Struct(
        "index_offset" / cs.Int64ul,
        "index_length" / cs.Int64ul,
    )),
    "crc32" / cs.Checksum(cs.Int32ul, _crc, this.fields.data),
    "magic" / cs.Const(END_MAGIC),
)
TRAILER_SIZE = Trailer.sizeof()


# --- v3: record pack and footer ----------------------------------------------------------

HeaderFieldsV3 = cs.Struct(*_HOST, *_CPU, *_SOURCE)     # at the start of the record pack

# One record in the pack: the pack's checksums cover it, so it has none of its own.
PackRecord = cs.Struct(
    "tag" / cs.Int16ul,
    "payload" / cs.Prefixed(cs.Int32ul, cs.GreedyBytes),   # the kind's struct, built
)
PACK_RECORD_OVERHEAD = 2 + 4

# The decompressed pack: the header fields, then the records one after another.
RecordPack = cs.Struct(
    "header" / HeaderFieldsV3,
    "records" / cs.GreedyRange(PackRecord),
)
PackHead = cs.Struct("header" / HeaderFieldsV3, "end" / cs.Tell)    # where records start

Footer = cs.Struct(
    "fields" / cs.RawCopy(cs.Struct(
        "flags" / cs.Int32ul,                    # none defined: readers refuse any bit
        "pack_offset" / cs.Int64ul,              # the pack ends where the footer starts
        "pack_stored" / cs.Int64ul,              # bytes in the file (one zstd frame)
        "pack_length" / cs.Int64ul,              # bytes once decompressed
        "pack_crc32" / cs.Int32ul,               # crc32 of the stored pack
    )),
    "crc32" / cs.Checksum(cs.Int32ul, _crc, this.fields.data),
    "version" / cs.Int16ul,                      # the last 10 bytes of every version from 3
    "magic" / cs.Const(MAGIC),
)
FOOTER_SIZE = Footer.sizeof()
# Read first, whatever the version: decides which footer layout precedes it.
FooterEnd = cs.Struct("version" / cs.Int16ul, "magic" / cs.Const(MAGIC))
FOOTER_END_SIZE = FooterEnd.sizeof()
FOOTER_KNOWN_FLAGS = 0


def pack_record(tag: int, payload: bytes) -> bytes:
    """PackRecord.build of one record."""
    if not 0 <= tag < 0x10000 or len(payload) >= 1 << 32:
        raise cs.FormatFieldError(f"record tag {tag} or payload length {len(payload)} "
                                  "out of range")
    return _FRAME_HEAD.pack(tag, len(payload)) + payload


def pack_entries(records, start: int) -> list[tuple[int, int, int]]:
    """(tag, offset, length) of every PackRecord in ``records[start:]``, which they must
    fill exactly (ValueError, saying where, otherwise)."""
    out = []
    pos, end = start, len(records)
    while pos < end:
        if end - pos < _FRAME_HEAD.size:
            raise ValueError(f"record at {pos} cut short")
        tag, length = _FRAME_HEAD.unpack_from(records, pos)
        n = _FRAME_HEAD.size + length
        if pos + n > end:
            raise ValueError(f"record at {pos} (tag {tag:#06x}, {length} bytes) runs past "
                             "the end of the pack")
        out.append((tag, pos, n))
        pos += n
    return out


def build_footer(pack_offset: int, pack_stored: int, pack_length: int,
                 pack_crc32: int) -> bytes:
    return Footer.build(dict(fields=dict(value=dict(
        flags=0, pack_offset=pack_offset, pack_stored=pack_stored, pack_length=pack_length,
        pack_crc32=pack_crc32)), version=CURRENT_VERSION))


def is_packed(tail: bytes) -> bool:
    """Whether bytes read from the end of a file end as a v3 image does."""
    return tail[-len(MAGIC):] == MAGIC


@dataclass(frozen=True)
class Format:
    """Everything that differs between format versions: the one dispatch point."""
    version: int
    header: cs.Construct | None
    header_fields: cs.Construct
    index: cs.Construct | None
    index_entry: cs.Construct | None
    entry_has_length: bool
    packed: bool = False           # v3: blocks from offset 0, a record pack and a footer


FORMATS = {
    1: Format(1, HeaderV1, HeaderFieldsV1, IndexV1, IndexEntryV1, False),
    2: Format(2, HeaderV2, HeaderFieldsV2, IndexV2, IndexEntryV2, True),
    3: Format(3, None, HeaderFieldsV3, None, None, True, packed=True),
}
CURRENT = FORMATS[CURRENT_VERSION]
