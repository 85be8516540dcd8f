"""Fixed-size arrays in declarations, parsed and built through ``struct``.

construct interprets an Array one field at a time: the 256 fields of a sigactions record
took 0.8 ms to decode, and the 211 entries of a busybox container's index 3 ms to build.
``PackedArray`` is an Array of items that are one FormatField, or a Struct of FormatFields
only, whose items go through one ``struct.Struct`` each: the same bytes, values and errors,
and an Array to everything that models a declaration (image/fields.py: the docs,
inspect --json, the property tests).
"""

import struct

import construct as cs


class PackedArray(cs.Array):
    """``cs.Array(count, subcon)`` for a FormatField or a Struct of FormatFields only.

    Parsed: a ListContainer of ints, or of Containers with the same keys.  Errors as
    cs.Array's: too few bytes is a StreamError (before anything is allocated for the
    count), a bad count a RangeError, an unpackable value a FormatFieldError, a missing
    field a KeyError."""

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
