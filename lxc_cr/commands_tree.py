"""``lxc-cr tree dump|restore`` (contract: Engine: any process tree)."""

from __future__ import annotations

import json
import sys


def run(args) -> int:
    from lxc_cr.errors import UsageError
    if getattr(args, "progress", False):
        from lxc_cr import progress
        progress.enable()
    if args.tree_cmd == "dump":
        from lxc_cr.dump import dump_tree
        if args.pid <= 0:
            raise UsageError(f"invalid pid {args.pid}")
        key = _key(args.encrypt)
        stats = dump_tree(args.pid, args.image, leave_running=args.leave_running,
                          compress=args.compress, level=args.compress_level, key=key,
                          tcp_established=args.tcp_established)
        if args.print_stats:
            print(json.dumps(stats, sort_keys=True))
        return 0
    if args.tree_cmd == "restore":
        from lxc_cr.privilege import limit_of
        from lxc_cr.restore import restore_tree
        limit = limit_of(args.max_privilege)
        stats = restore_tree(args.image, pidfile=args.pidfile, key=_key(args.key),
                             max_privilege=limit)
        if args.print_stats:
            print(json.dumps(stats, sort_keys=True))
        else:
            print(stats["root_host_pid"])
        sys.stdout.flush()
        return 0
    raise UsageError(f"unknown tree action {args.tree_cmd}")


def _key(path: str | None) -> bytes | None:
    """The key in KEYFILE (``--encrypt``/``--key``), or None."""
    if not path:
        return None
    from lxc_cr.image.envelope import load_key
    return load_key(path)
