"""image/packed.py, PackedArray and PackedPrefixedArray: construct's Array and PrefixedArray,
parsed and built by struct.  Same bytes, same values, same errors as the declarations they
stand for, and a record read from disk with an edited count fails at once."""

from __future__ import annotations

import random

import construct as cs
import pytest

from lxc_cr.image import fields
from lxc_cr.image.packed import PackedArray, PackedPrefixedArray

pytestmark = pytest.mark.unit

ITEMS = [
    cs.Int64ul,
    cs.Int16ul,
    cs.Struct("handler" / cs.Int64ul, "flags" / cs.Int64ul, "restorer" / cs.Int64ul,
              "mask" / cs.Int64ul),
    cs.Struct("resource" / cs.Int8ul, "cur" / cs.Int64ul, "max" / cs.Int64ul),
    cs.Struct("tfd" / cs.Int32ul, "events" / cs.Int32ul, "data" / cs.Int64ul),
    cs.Struct("a" / cs.Int32sb, "b" / cs.Int8sb),
]


def _pairs():
    for item in ITEMS:
        yield cs.Array(5, item), PackedArray(5, item)
        yield cs.PrefixedArray(cs.VarInt, item), PackedPrefixedArray(cs.VarInt, item)


@pytest.mark.parametrize("plain,packed", list(_pairs()), ids=repr)
def test_same_bytes_values_and_model(plain, packed):
    rnd = random.Random(7)
    node = fields.node(plain)
    assert fields.node(packed) == node           # docs, inspect --json, strategies
    for i in range(40):
        value = fields.sample(node, i)
        data = plain.build(value)
        assert packed.build(value) == data
        assert packed.parse(data) == plain.parse(data)
        junk = bytes(rnd.randrange(256) for _ in range(len(data)))
        try:
            want = plain.parse(junk)
        except cs.ConstructError as e:
            with pytest.raises(type(e)):
                packed.parse(junk)
        else:
            assert packed.parse(junk) == want
            assert packed.build(want) == plain.build(want)


def test_the_same_errors():
    sa = ITEMS[2]
    plain, packed = cs.Array(3, sa), PackedArray(3, sa)
    good = plain.build([dict(handler=1, flags=2, restorer=3, mask=4)] * 3)
    for p in (plain, packed):
        with pytest.raises(cs.StreamError):                     # a cut record
            p.parse(good[:-1])
        with pytest.raises(cs.RangeError):                      # the wrong count
            p.build([dict(handler=1, flags=2, restorer=3, mask=4)] * 2)
        with pytest.raises(cs.FormatFieldError):                # out of range
            p.build([dict(handler=-1, flags=2, restorer=3, mask=4)] * 3)
        with pytest.raises(KeyError):                           # a missing field
            p.build([dict(handler=1, flags=2, restorer=3)] * 3)
    # an edited count of 2**60 fails before anything is allocated for it
    edited = cs.VarInt.build(2 ** 60) + bytes(64)
    with pytest.raises(cs.StreamError):
        PackedPrefixedArray(cs.VarInt, sa).parse(edited)


def test_only_fixed_fields():
    with pytest.raises(TypeError):
        PackedArray(2, cs.VarInt)
    with pytest.raises(TypeError):
        PackedArray(2, cs.Struct("a" / cs.Int8ul, "s" / cs.PascalString(cs.VarInt, "utf8")))
    with pytest.raises(TypeError):
        PackedArray(2, cs.Struct("a" / cs.Int32ul, "b" / cs.Int32ub))   # mixed byte order
