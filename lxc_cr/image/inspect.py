"""``lxc-cr inspect IMAGE [--json] [--section KIND]``: decode any image.

Human output: header, namespaces, a ``ps f`` style process tree, fds per task, sizes per
section.  ``--json``: the same as one object (schemas/inspect.schema.json).  ``--section
KIND``: every record of that kind with every field (``--json``: the lossless form of
image/fields.py, which ``fields.from_json`` turns back into the record exactly).
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import sys

from lxc_cr.errors import UsageError
from lxc_cr.image import fields as FL
from lxc_cr.image import format as F
from lxc_cr.image import kinds as K
from lxc_cr.image.reader import ImageReader, block_refs

NS_KINDS = ("pid", "uts", "ipc", "net", "mnt", "cgroup", "time", "user")
# fields shown in hex as well (addresses, flags, masks, registers)
_HEX = re.compile(r"addr|flags|mask|^start|^end|_start$|_end$|brk|^vaddr$|^handler$|"
                  r"^restorer$|^cap_|^prot$|^madv$|^regs$|^auxv$|^xcr0$|dev$|robust_list|"
                  r"clear_tid|^ss_sp$|^offset$|crc32|^pgoff$|^fs_base$|^gs_base$")


# namespace records listed in the summary: record kind -> (namespace, list name)
_NS_LISTS = {
    "net_link_conf": ("net", "link_conf"), "net_addr": ("net", "addresses"),
    "net_route": ("net", "routes"), "net_rule": ("net", "rules"),
    "net_sysctl": ("net", "sysctls"), "net_nftables": ("net", "nftables"),
    "mount": ("mnt", "mounts"), "mqueue": ("ipc", "mqueues"),
    "ipc_sysctl": ("ipc", "sysctls"), "cgroup_task": ("cgroup", "tasks"),
    "cgroup_limit": ("cgroup", "limits"), "timens": ("time", "offsets"),
    "pid_for_children": ("pid", "for_children"),
}


def _kind_key(tag: int) -> str:
    k = K.by_tag(tag)
    return k.name if k else f"tag_{tag:#06x}"


def _iso(ns: int) -> str:
    try:
        t = _dt.datetime.fromtimestamp(ns // 1_000_000_000, _dt.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return "?"
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the summary (one pass over the records) -------------------------------------------------

def summarize(r: ImageReader) -> dict:
    """The JSON summary of an image (schemas/inspect.schema.json)."""
    h = r.header
    sections: dict[str, dict] = {}
    for tag, _off, length in r.index:
        s = sections.setdefault(_kind_key(tag), dict(tag=tag, count=0, bytes=0))
        s["count"] += 1
        s["bytes"] += length
    ns = {k: dict(own=None, ino=None) for k in ("ipc", "mnt", "pid")}
    ns["uts"] = dict(own=None, ino=None, hostname=None, domainname=None)
    ns["net"] = dict(own=None, ino=None, links=[])
    tasks: dict[int, dict] = {}
    threads: dict[int, int] = {}
    vmas: dict[int, int] = {}
    pages: dict[int, int] = {}
    fds: dict[int, list] = {}
    page_data = dict(blocks=0, length=0, stored=0, zstd_blocks=0)
    all_blocks = dict(blocks=0, length=0, stored=0)
    seen = set()
    stats = None
    for kind, obj in r.records():
        if kind is None:
            continue
        name = kind.name
        if name == "ns":
            d = ns.setdefault(str(obj.kind), {})
            d.update(own=bool(obj.own), ino=obj.ino)
        elif name == "uts":
            ns["uts"].update(hostname=obj.hostname, domainname=obj.domainname)
        elif name == "net_link":
            ns["net"]["links"].append(FL.to_json(FL.node(kind.struct), obj))
        elif name in _NS_LISTS:
            kind_ns, key = _NS_LISTS[name]
            d = ns.setdefault(kind_ns, dict(own=None, ino=None))
            d.setdefault(key, []).append(FL.to_json(FL.node(kind.struct), obj))
        elif name == "task":
            tasks[obj.pid] = dict(pid=obj.pid, ppid=obj.ppid, pgid=obj.pgid, sid=obj.sid,
                                  comm=obj.comm, state=obj.state, nspids=list(obj.nspids),
                                  host_pid=obj.host_pid)
        elif name == "thread":
            threads[obj.pid] = threads.get(obj.pid, 0) + 1
        elif name == "dump_stats":
            stats = {k: v for k, v in obj.items() if not k.startswith("_")}
        elif name == "vma":
            vmas[obj.pid] = vmas.get(obj.pid, 0) + 1
        elif name == "pages":
            if obj.pid:
                pages[obj.pid] = pages.get(obj.pid, 0) + obj.npages
            b = obj.block
            page_data["blocks"] += 1
            page_data["length"] += b.length
            page_data["stored"] += b.stored
            page_data["zstd_blocks"] += F.codec_kind(b.codec) == F.CODEC_ZSTD
        elif name == "fd":
            fds.setdefault(obj.pid, []).append(dict(
                fd=obj.fd, kind=obj.kind, target=obj.target, flags=obj.flags,
                cloexec=bool(obj.cloexec), pos=obj.pos, file_id=obj.file_id))
        for ref in block_refs(kind, obj):
            key = (ref.offset, ref.stored)
            if key not in seen:
                seen.add(key)
                all_blocks["blocks"] += 1
                all_blocks["length"] += ref.length
                all_blocks["stored"] += ref.stored
    by_file: dict[int, list] = {}
    for pid, lst in fds.items():
        for f in lst:
            if f["file_id"]:
                by_file.setdefault(f["file_id"], []).append((pid, f["fd"]))
    for pid, lst in fds.items():
        for f in lst:
            f["shared_with"] = [dict(pid=p, fd=d) for p, d in by_file.get(f["file_id"], ())
                                if (p, d) != (pid, f["fd"])]
    ns["pid"]["levels"] = max((len(t["nspids"]) for t in tasks.values()), default=0)
    ns["pid"]["nested"] = [dict(pid=t["pid"], nspids=t["nspids"]) for t in tasks.values()
                           if len(t["nspids"]) > 1]
    out_tasks = []
    for pid in _tree_order(tasks):
        t = tasks[pid]
        t.update(threads=threads.get(pid, 0), vmas=vmas.get(pid, 0), pages=pages.get(pid, 0),
                 fds=sorted(fds.get(pid, []), key=lambda f: f["fd"]))
        out_tasks.append(t)
    return {
        "image": r.path,
        "format_version": h.version,
        "flags": h.flags,
        "created": h.created,
        "created_iso": _iso(h.created),
        "kernel": h.kernel,
        "arch": h.arch,
        "xcr0": h.xcr0,
        "vdso_size": h.vdso_size,
        "vdso_hash": bytes(h.vdso_hash).hex(),
        "source": {"kind": str(h.source_kind), "name": h.source_name},
        "namespaces": ns,
        "tasks": out_tasks,
        "records": sections,
        "page_data": page_data,
        "stats": stats,
        "data_blocks": all_blocks,
        "file_size": r.size,
    }


def _tree_order(tasks: dict[int, dict]) -> list[int]:
    """Pids parents first, children after their parent (as ``ps f``)."""
    children: dict[int, list] = {}
    roots = []
    for pid, t in tasks.items():
        if t["ppid"] in tasks and t["ppid"] != pid:
            children.setdefault(t["ppid"], []).append(pid)
        else:
            roots.append(pid)
    out, seen = [], set()

    def walk(pid, depth):
        if pid in seen:
            return
        seen.add(pid)
        tasks[pid]["_depth"] = depth
        out.append(pid)
        for c in sorted(children.get(pid, ())):
            walk(c, depth + 1)

    for pid in sorted(roots):
        walk(pid, 0)
    for pid in sorted(tasks):   # cycles in corrupt ppids: still list every task
        walk(pid, 0)
    return out


# --- human output -----------------------------------------------------------------------------

def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def _human(s: dict, out) -> None:
    w = out.write
    w(f"image      {s['image']} ({_size(s['file_size'])})\n")
    w(f"format     v{s['format_version']}, flags {s['flags']:#x}\n")
    w(f"created    {s['created_iso']} ({s['created']} ns)\n")
    w(f"host       kernel {s['kernel']}, arch {s['arch']}, xcr0 {s['xcr0']:#x}, "
      f"vdso {s['vdso_size']} bytes sha256 {s['vdso_hash']}\n")
    w(f"source     {s['source']['kind']} {s['source']['name']}\n")
    if s.get("stats"):
        w("stats      " + ", ".join(f"{k} {v}" for k, v in s["stats"].items()) + "\n")
    w("\nnamespaces\n")
    for kind in NS_KINDS:
        d = s["namespaces"].get(kind)
        if d is None:
            continue
        own = {True: "own ", False: "host", None: "?   "}[d["own"]]
        ino = d["ino"] if d["ino"] is not None else "?"
        extra = ""
        if kind == "uts" and d["hostname"] is not None:
            extra = f"  hostname {d['hostname']!r} domainname {d['domainname']!r}"
        w(f"  {kind:<7} {own} ino {ino}{extra}\n")
        if kind == "net":
            for ln in d["links"]:
                w(f"    {ln['index']:>3} {ln['name']:<12} {ln['kind']:<9} flags {ln['flags']:#x}"
                  f" mtu {ln['mtu']} {ln['address']}\n")
            for a in d.get("addresses", ()):
                w(f"        addr {a['local'] or a['address']}/{a['prefixlen']} on {a['index']}\n")
            for r in d.get("routes", ()):
                w(f"        route {r['dst'] or 'default'}/{r['dst_len']} table {r['table']}"
                  f"{' via ' + r['gateway'] if r['gateway'] else ''} oif {r['oif']}\n")
            if d.get("rules") or d.get("sysctls") or d.get("nftables"):
                w(f"        {len(d.get('rules', ()))} rules, {len(d.get('sysctls', ()))} "
                  f"sysctls changed, nftables {'yes' if d.get('nftables') else 'no'}\n")
        elif kind == "mnt":
            for m in d.get("mounts", ()):
                if m["how"] != "host":
                    w(f"    {m['how']:<6} {m['mount_point']} {m['fstype']} {m['source']} "
                      f"{m['super_options']}\n")
        elif kind == "ipc":
            for q in d.get("mqueues", ()):
                w(f"    mqueue /{q['name']} mode {q['mode']:#o} {len(q['messages'])} messages\n")
        elif kind == "pid":
            for t in d.get("nested", ()):
                w(f"    pid {t['pid']} nested: pids {t['nspids']} (the tree's level first)\n")
            for f in d.get("for_children", ()):
                w(f"    pid {f['pid']} forks into the namespace of its child {f['child']}\n"
                  if f["child"] else
                  f"    pid {f['pid']} forks into a new namespace (unshared, not entered)\n")
        elif kind == "time":
            for o in d.get("offsets", ()):
                w(f"    {o['clock']} offset {o['offset_sec']}.{o['offset_nsec']:09d} s\n")
        elif kind == "cgroup":
            for c in d.get("tasks", ()):
                where = ", ".join(f"{x['hierarchy'] or 'v2'}:{x['path']}" for x in c["cgroups"])
                w(f"    pid {c['pid']} in {where}\n")
            for lim in d.get("limits", ()):
                if lim["path"]:
                    w(f"    {lim['hierarchy'] or 'v2'}:{lim['path']} {lim['file']} = "
                      f"{lim['value']}\n")
    w("\nprocesses\n")
    w(f"  {'PID':>7} {'PPID':>7} {'PGID':>7} {'SID':>7} {'THR':>4} {'VMAS':>5} "
      f"{'PAGES':>9} {'FDS':>4} S COMMAND\n")
    for t in s["tasks"]:
        d = t.get("_depth", 0)
        tree = "" if d == 0 else "    " * (d - 1) + " \\_ "
        w(f"  {t['pid']:>7} {t['ppid']:>7} {t['pgid']:>7} {t['sid']:>7} {t['threads']:>4} "
          f"{t['vmas']:>5} {t['pages']:>9} {len(t['fds']):>4} {t['state'] or '?'} "
          f"{tree}{t['comm']}\n")
    w("\nfiles\n")
    for t in s["tasks"]:
        if not t["fds"]:
            continue
        w(f"  pid {t['pid']} ({t['comm']})\n")
        for f in t["fds"]:
            shared = ", ".join(f"{x['pid']}:{x['fd']}" for x in f["shared_with"])
            w(f"    {f['fd']:>4} {f['kind']:<14} {f['target']}  flags {f['flags']:#o}"
              f"{' cloexec' if f['cloexec'] else ''} pos {f['pos']}"
              f"{'  shared with ' + shared if shared else ''}\n")
    w("\nsections\n")
    w(f"  {'KIND':<16} {'TAG':>6} {'COUNT':>8} {'BYTES':>12}\n")
    for name, sec in sorted(s["records"].items(), key=lambda kv: kv[1]["tag"]):
        w(f"  {name:<16} {sec['tag']:#06x} {sec['count']:>8} {sec['bytes']:>12}\n")
    pd, ab = s["page_data"], s["data_blocks"]
    w(f"  page data: {pd['blocks']} blocks, {pd['length']} bytes "
      f"({_size(pd['length'])}), stored {pd['stored']} bytes, {pd['zstd_blocks']} zstd\n")
    w(f"  all data blocks: {ab['blocks']}, {ab['length']} bytes, stored {ab['stored']}\n")


def show_value(name: str, n: FL.Node, v, indent: str, out) -> None:
    """One field, every detail, nested structs and lists expanded."""
    k = n.kind
    if k == "struct":
        out.write(f"{indent}{name}:\n")
        for fname, f in n.fields:
            if f.kind != "const":
                show_value(fname, f, v[fname], indent + "  ", out)
    elif k == "list" and n.item.kind in ("struct", "list", "bytes"):
        out.write(f"{indent}{name}: ({len(v)} items)\n")
        for i, x in enumerate(v):
            show_value(f"[{i}]", n.item, x, indent + "  ", out)
    else:
        out.write(f"{indent}{name} = {_scalar(name, n, v)}\n")


def _scalar(name: str, n: FL.Node, v) -> str:
    k = n.kind
    hexy = bool(_HEX.search(name))
    if k == "list":
        return "[" + ", ".join(_scalar(name, n.item, x) for x in v) + "]"
    if k == "bytes":
        return f"{len(v)} bytes: {bytes(v).hex()}" if v else "0 bytes"
    if k == "enum":
        return f"{v} ({int(v)})"
    if k == "flag":
        return str(bool(v))
    if k == "str":
        return repr(str(v))
    if hexy and k in ("int", "varint"):
        return f"{v} ({v:#x})" if v >= 0 else f"{v} (-{-v:#x})"
    return str(v)


def _section(r: ImageReader, name: str, as_json: bool, out) -> None:
    kind = K.by_name(name)
    tag = kind.tag if kind else None
    if kind is None:
        try:
            tag = int(name, 0)
        except ValueError:
            known = ", ".join(k.name for k in K.all_kinds())
            raise UsageError(f"unknown record kind {name!r} (known: {known}, or a tag "
                             "number)") from None
        kind = K.by_tag(tag)
    node = FL.node(kind.struct) if kind else None
    items = list(r.records_with_offsets(tag))
    label = kind.name if kind else f"tag {tag:#06x}"
    head = kind.name + f" (tag {tag:#06x})" if kind else label
    if as_json:
        recs = [dict(offset=off, fields=FL.to_json(node, obj)) if node else
                dict(offset=off, raw=bytes(obj).hex()) for off, _k, obj in items]
        json.dump({"image": r.path, "format_version": r.header.version, "section": label,
                   "tag": tag, "records": recs}, out, indent=2)
        out.write("\n")
        return
    out.write(f"{head}: {len(items)} records\n")
    where = "in the record pack" if r.format.packed else "in the file"
    for i, (off, _k, obj) in enumerate(items):
        if node is None:
            out.write(f"#{i} at offset {off} {where}: {len(obj)} bytes: "
                      f"{bytes(obj).hex()}\n")
            continue
        out.write(f"#{i} at offset {off} {where}\n")
        for fname, f in node.fields:
            if f.kind != "const":
                show_value(fname, f, obj[fname], "  ", out)


def run(args, out=None) -> int:
    out = out or sys.stdout
    key = None
    if getattr(args, "key", None):
        from lxc_cr.image.envelope import load_key
        key = load_key(args.key)
    with ImageReader(args.image, key=key) as r:
        if getattr(args, "verbose", False):
            r.verify()
        if getattr(args, "section", None):
            _section(r, args.section, args.json, out)
            return 0
        s = summarize(r)
    if args.json:
        for t in s["tasks"]:
            t.pop("_depth", None)
        json.dump(s, out, indent=2)
        out.write("\n")
    else:
        _human(s, out)
    return 0
