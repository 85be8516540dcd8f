"""construct building blocks shared by the resource modules' record declarations."""

import struct

import construct as cs


class PackedArray(cs.Array):
    """``cs.Array`` of items that are one FormatField, or a Struct of FormatFields only,
    parsed and built by one ``struct.Struct`` per item instead of field by field.

    The bytes and the values are cs.Array's (a ListContainer of ints, or of Containers with
    the same keys), and so are the errors: too few bytes is a StreamError, a bad count a
    RangeError, an unpackable value a FormatFieldError.  Every tool that models a
    declaration (image/fields.py: the docs, inspect --json, the property tests) sees an
    Array.  construct interprets the 256 fields of a sigactions record one at a time: 0.8
    ms a record, a third of the time to decode a busybox container's whole image."""

    def __init__(self, count, subcon):
        super().__init__(count, subcon)
        if isinstance(subcon, cs.FormatField):
            self._names, fmts = None, [subcon.fmtstr]
        elif isinstance(subcon, cs.Struct) and subcon.subcons and all(
                isinstance(s, cs.Renamed) and s.name and isinstance(s.subcon, cs.FormatField)
                for s in subcon.subcons):
            self._names = tuple(s.name for s in subcon.subcons)
            fmts = [s.subcon.fmtstr for s in subcon.subcons]
        else:
            raise TypeError(f"PackedArray of {subcon!r}: not a FormatField or a Struct of them")
        if len({f[0] for f in fmts}) != 1 or fmts[0][0] not in "<>!":
            raise TypeError(f"PackedArray of {subcon!r}: mixed or native byte order")
        self._item = struct.Struct(fmts[0][0] + "".join(f[1:] for f in fmts))

    def _parse(self, stream, context, path):
        count = cs.evaluate(self.count, context)
        if not 0 <= count:
            raise cs.RangeError(f"invalid count {count}", path=path)
        rows = self._item.iter_unpack(cs.stream_read(stream, count * self._item.size, path))
        if self._names is None:
            return cs.ListContainer(r[0] for r in rows)
        names = self._names
        return cs.ListContainer(cs.Container(zip(names, r)) for r in rows)

    def _build(self, obj, stream, context, path):
        count = cs.evaluate(self.count, context)
        if not 0 <= count:
            raise cs.RangeError(f"invalid count {count}", path=path)
        if len(obj) != count:
            raise cs.RangeError(f"expected {count} elements, found {len(obj)}", path=path)
        pack = self._item.pack
        try:
            if self._names is None:
                data = b"".join([pack(v) for v in obj])
            else:
                names = self._names
                data = b"".join([pack(*[e[n] for n in names]) for e in obj])
        except struct.error as e:
            raise cs.FormatFieldError(f"struct {self._item.format!r} error during building: "
                                      f"{e}", path=path) from None
        cs.stream_write(stream, data, len(data), path)
        return obj


def PackedPrefixedArray(countfield, subcon):
    """``cs.PrefixedArray`` (the count, then the items) whose items are a PackedArray."""
    macro = cs.PrefixedArray(countfield, subcon)
    items = macro.subcons[1]                # "items" / Array(this.count, subcon)
    items.subcon = PackedArray(items.subcon.count, subcon)
    return macro


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
