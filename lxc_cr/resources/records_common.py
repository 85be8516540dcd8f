"""construct building blocks shared by the resource modules' record declarations."""

import construct as cs

from lxc_cr.image.packed import PackedArray, PackedPrefixedArray  # noqa: F401

Str = cs.PascalString(cs.VarInt, "utf8")
Blob = cs.Prefixed(cs.VarInt, cs.GreedyBytes)
U64s = PackedPrefixedArray(cs.VarInt, cs.Int64ul)
U32s = PackedPrefixedArray(cs.VarInt, cs.Int32ul)

# A reference to a data block of the image (page data, file contents).  Written by
# ImageWriter.write_block(); read back by ImageReader.read_block().
BlockRef = cs.Struct(
    "offset" / cs.Int64ul,   # file offset, 4 KiB aligned
    "length" / cs.Int64ul,   # uncompressed length
    "stored" / cs.Int64ul,   # bytes in the file (== length unless compressed)
    "codec" / cs.Int8ul,     # 0 raw, 1 zstd
    "crc32" / cs.Int32ul,    # of the stored bytes
)
