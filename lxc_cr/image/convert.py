"""``lxc-cr convert IN OUT``: rewrite an image (of any supported version) as the current one.

Every record is decoded (migrated to the current shape) and re-encoded with its kind's
declaration; unknown records are kept as they are; data blocks are copied as stored (same
codec and crc32).  Records and blocks are replayed in their file order, so a current-version
image recodes to identical bytes (the crit-style recode test relies on it).
"""

from __future__ import annotations

import sys

from lxc_cr.image import format as F
from lxc_cr.image.reader import ImageReader, block_refs
from lxc_cr.image.writer import ImageWriter


def _ref_key(ref) -> tuple:
    return (ref["offset"], ref["length"], ref["stored"], ref["codec"], ref["crc32"])


def writer_for(reader: ImageReader, path, **kw) -> ImageWriter:
    """An ImageWriter that repeats ``reader``'s header fields (created time included)."""
    h = reader.header
    args = dict(source_kind=str(h.source_kind), source_name=h.source_name, xcr0=h.xcr0,
                vdso_size=h.vdso_size, vdso_hash=h.vdso_hash, kernel=h.kernel, arch=h.arch,
                created=h.created)
    args.update(kw)
    return ImageWriter(path, **args)


def recode(reader: ImageReader, writer: ImageWriter, edit=None) -> dict:
    """Copy every record and referenced block of ``reader`` into ``writer``, in file order.

    ``edit(kind, obj)``, if given, may change a decoded record before it is re-encoded,
    or drop it by returning False (tests use it to forge images that are intact but say
    something else).

    A block that lies before the record referring to it is copied when the file position
    reaches it; a block after its record (a reserved block) is copied when first referred to.
    """
    reader.verify()
    items = list(reader.records_with_offsets())
    blocks = {}
    for _off, k, obj in items:
        for ref in block_refs(k, obj):
            blocks.setdefault(_ref_key(ref), ref)
    order = sorted([(off, 1, k, obj) for off, k, obj in items] +
                   [(ref["offset"], 0, None, ref) for ref in blocks.values()],
                   key=lambda t: (t[0], t[1]))
    done: dict[tuple, dict] = {}
    src = reader
    for _off, is_record, kind, obj in order:
        if not is_record:
            key = _ref_key(obj)
            if key not in done:
                done[key] = writer.copy_block(src, obj)
            continue
        for ref in block_refs(kind, obj):
            key = _ref_key(ref)
            if key not in done:
                done[key] = writer.copy_block(src, ref)
            new = done[key]
            for k in ("offset", "length", "stored", "codec", "crc32"):
                ref[k] = new[k]
        if edit is not None and edit(kind, obj) is False:
            continue
        writer.add(kind, obj)
    return dict(records=len(items), blocks=len(blocks))


def run(args) -> int:
    from lxc_cr.image.envelope import load_key
    key = load_key(args.key) if getattr(args, "key", None) else None
    out_key = load_key(args.encrypt) if getattr(args, "encrypt", None) else None
    with ImageReader(args.src, key=key) as r:
        with writer_for(r, args.dst, key=out_key) as w:
            n = recode(r, w)
        version = r.header.version
    if getattr(args, "verbose", False) or sys.stdout.isatty():
        print(f"{args.src} (format v{version}) -> {args.dst} (format v{F.CURRENT_VERSION}): "
              f"{n['records']} records, {n['blocks']} blocks")
    return 0
