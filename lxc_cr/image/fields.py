"""A small model of the construct declarations used in records, for the tools around them.

``node(struct)`` turns a construct declaration into a tree of ``Node`` (int, varint, flag,
enum, str, bytes, list, struct, const).  From that one tree come:

* ``to_json`` / ``from_json``: the lossless JSON form of a parsed record (``inspect --json``)
  and its exact inverse (bytes as hex, enums by name or number, flags as booleans);
* ``describe``: the field tables of docs/image-format.md;
* ``sample``: a deterministic example value (tests, docs);
* the hypothesis strategies of the property tests.

Only the construct types that record declarations use are modelled; anything else raises
``TypeError`` naming it, so a new type gets added here rather than silently mis-handled.
"""

from __future__ import annotations

import struct as _struct
from dataclasses import dataclass, field

import construct as cs


@dataclass(frozen=True)
class Node:
    """One node of the model of a construct declaration (see the module docstring)."""

    kind: str                      # int varint flag enum str bytes list struct const
    size: int | None = None        # fixed byte size of int/flag/enum base/str/bytes, list count
    signed: bool = False           # int
    prefix: "Node | None" = None   # length/count prefix (str, bytes, list)
    item: "Node | None" = None     # list item, enum base
    fields: tuple = ()             # struct: ((name, Node), ...)
    encoding: str = ""             # str
    mapping: dict = field(default_factory=dict, compare=False, hash=False)   # enum name->int
    value: object = None           # const


def node(sc: cs.Construct) -> Node:
    """The Node tree of a construct declaration."""
    while isinstance(sc, cs.Renamed):
        sc = sc.subcon
    if isinstance(sc, cs.FormatField):
        code = sc.fmtstr[-1]
        return Node("int", size=_struct.calcsize(sc.fmtstr), signed=code.islower() and code != "?")
    if isinstance(sc, cs.BytesInteger) and isinstance(sc.length, int):
        return Node("int", size=sc.length, signed=bool(sc.signed))
    if isinstance(sc, type(cs.VarInt)):
        return Node("varint")
    if isinstance(sc, type(cs.Flag)):
        return Node("flag", size=1)
    if isinstance(sc, cs.Enum):
        return Node("enum", item=node(sc.subcon), mapping=dict(sc.encmapping))
    if isinstance(sc, cs.StringEncoded):
        inner = sc.subcon
        if isinstance(inner, cs.Prefixed) and isinstance(inner.subcon, type(cs.GreedyBytes)):
            return Node("str", prefix=node(inner.lengthfield), encoding=sc.encoding)
        if isinstance(inner, cs.FixedSized) and isinstance(inner.length, int) and \
                isinstance(inner.subcon, cs.NullStripped):
            return Node("str", size=inner.length, encoding=sc.encoding)
        raise TypeError(f"unsupported string construct {inner!r}")
    if isinstance(sc, cs.Prefixed) and isinstance(sc.subcon, type(cs.GreedyBytes)):
        return Node("bytes", prefix=node(sc.lengthfield))
    if isinstance(sc, cs.Bytes) and isinstance(sc.length, int):
        return Node("bytes", size=sc.length)
    if isinstance(sc, cs.Array) and isinstance(sc.count, int):
        return Node("list", size=sc.count, item=node(sc.subcon))
    if isinstance(sc, cs.FocusedSeq) and [s.name for s in sc.subcons] == ["count", "items"]:
        count, items = sc.subcons[0].subcon, sc.subcons[1].subcon    # PrefixedArray
        if isinstance(count, cs.Rebuild) and isinstance(items, cs.Array):
            return Node("list", prefix=node(count.subcon), item=node(items.subcon))
    if isinstance(sc, cs.Struct):
        return Node("struct", fields=tuple((s.name, node(s)) for s in sc.subcons
                                           if s.name and not s.name.startswith("_")))
    if isinstance(sc, cs.Const):
        return Node("const", value=sc.value)
    raise TypeError(f"construct type {type(sc).__name__} is not modelled in image/fields.py")


def _int_range(n: Node) -> tuple[int, int]:
    if n.kind == "varint":
        return 0, 2 ** 64 - 1
    bits = 8 * n.size
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if n.signed else (0, (1 << bits) - 1)


# --- JSON ---------------------------------------------------------------------------------

def to_json(n: Node, v):
    """The JSON form of a parsed value; ``from_json`` inverts it exactly."""
    k = n.kind
    if k == "struct":
        return {name: to_json(f, v[name]) for name, f in n.fields if f.kind != "const"}
    if k == "list":
        return [to_json(n.item, x) for x in v]
    if k == "bytes":
        return bytes(v).hex()
    if k == "enum":
        return str(v) if isinstance(v, cs.EnumIntegerString) else int(v)
    if k == "flag":
        return bool(v)
    if k == "str":
        return str(v)
    return int(v)


def from_json(n: Node, j):
    k = n.kind
    if k == "struct":
        return {name: from_json(f, j[name]) for name, f in n.fields if f.kind != "const"}
    if k == "list":
        return [from_json(n.item, x) for x in j]
    if k == "bytes":
        return bytes.fromhex(j)
    return j


def json_schema(n: Node) -> dict:
    """A JSON schema of ``to_json``'s output for this node."""
    k = n.kind
    if k == "struct":
        props = {name: json_schema(f) for name, f in n.fields if f.kind != "const"}
        return {"type": "object", "properties": props, "required": list(props),
                "additionalProperties": False}
    if k == "list":
        s = {"type": "array", "items": json_schema(n.item)}
        if n.size is not None:
            s.update(minItems=n.size, maxItems=n.size)
        return s
    if k == "bytes":
        s = {"type": "string", "pattern": "^([0-9a-f]{2})*$"}
        if n.size is not None:
            s.update(minLength=2 * n.size, maxLength=2 * n.size)
        return s
    if k == "enum":
        return {"anyOf": [{"enum": sorted(n.mapping)}, {"type": "integer"}]}
    if k == "flag":
        return {"type": "boolean"}
    if k == "str":
        return {"type": "string"}
    return {"type": "integer"}


# --- docs ---------------------------------------------------------------------------------

def type_name(n: Node) -> str:
    k = n.kind
    if k == "int":
        return f"{'i' if n.signed else 'u'}{8 * n.size}"
    if k == "varint":
        return "varint"
    if k == "flag":
        return "bool (u8)"
    if k == "enum":
        names = ", ".join(f"{name}={val}" for name, val in
                          sorted(n.mapping.items(), key=lambda kv: kv[1]))
        return f"enum {type_name(n.item)} {{{names}}}"
    if k == "str":
        if n.size is not None:
            return f"string[{n.size}] ({n.encoding}, NUL padded)"
        return f"string ({type_name(n.prefix)} length, {n.encoding})"
    if k == "bytes":
        return f"bytes[{n.size}]" if n.size is not None else \
            f"bytes ({type_name(n.prefix)} length)"
    if k == "list":
        count = str(n.size) if n.size is not None else f"{type_name(n.prefix)} count"
        inner = "struct" if n.item.kind == "struct" else type_name(n.item)
        return f"array[{count}] of {inner}"
    if k == "struct":
        return "struct"
    if k == "const":
        return f"const {n.value!r}"
    raise AssertionError(k)


def fixed_size(n: Node) -> int | None:
    k = n.kind
    if k in ("int", "flag"):
        return n.size
    if k == "enum":
        return fixed_size(n.item)
    if k in ("str", "bytes"):
        return n.size
    if k == "const":
        return len(n.value)
    if k == "list":
        inner = fixed_size(n.item)
        return None if n.size is None or inner is None else n.size * inner
    if k == "struct":
        sizes = [fixed_size(f) for _, f in n.fields]
        return None if None in sizes else sum(sizes)
    return None


def describe(n: Node, prefix: str = "") -> list[tuple[str, str, int | None]]:
    """(dotted field name, type, fixed size or None) rows of a struct, nested ones expanded."""
    rows = []
    for name, f in n.fields:
        rows.append((prefix + name, type_name(f), fixed_size(f)))
        if f.kind == "struct":
            rows += describe(f, prefix + name + ".")
        elif f.kind == "list" and f.item.kind == "struct":
            rows += describe(f.item, prefix + name + "[].")
    return rows


# --- samples ------------------------------------------------------------------------------

_BLOCKREF_FIELDS = ["offset", "length", "stored", "codec", "crc32"]


def sample(n: Node, seed: int = 1):
    """A deterministic, valid example value for the node (varies with ``seed``)."""
    k = n.kind
    if k == "struct" and [name for name, _f in n.fields] == _BLOCKREF_FIELDS:
        return dict.fromkeys(_BLOCKREF_FIELDS, 0)     # the empty block: valid in any image
    if k == "struct":
        return {name: sample(f, seed + i) for i, (name, f) in enumerate(n.fields)
                if f.kind != "const"}
    if k == "list":
        count = n.size if n.size is not None else seed % 3 + 1
        return [sample(n.item, seed + i) for i in range(count)]
    if k == "bytes":
        size = n.size if n.size is not None else seed % 7 + 1
        return bytes((seed * 37 + i) & 0xFF for i in range(size))
    if k == "str":
        text = f"s{seed}"
        return text[:n.size] if n.size is not None else text
    if k == "enum":
        names = sorted(n.mapping, key=n.mapping.get)
        return names[seed % len(names)]
    if k == "flag":
        return bool(seed % 2)
    lo, hi = _int_range(n)
    return max(lo, min(hi, seed * 0x1001))
