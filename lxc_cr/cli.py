"""The ``lxc-cr`` and ``lxc-checkpoint`` command lines (contract: ../shared/contract.md).

Imports of the engine are lazy, so ``--help`` and start-up stay small.  Every LxcCrError
becomes one ``lxc-cr: error:`` line and its exit code; anything else is a bug and still
prints one line (with ``--debug`` the traceback too) and exits 1.

The installed commands run ``run`` and ``run_lxc_checkpoint``: ``main`` and
``lxc_checkpoint_main`` as the whole process (see ``_as_process``).
"""

from __future__ import annotations

import argparse
import sys

PROG = "lxc-cr"


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one contract line and exit code 2."""

    def error(self, message):  # noqa: D401 - argparse API
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{PROG}: error: {message}\n")
        sys.exit(2)


def _add_common(p: argparse.ArgumentParser, top: bool = False) -> None:
    # sub-commands repeat the options without a default, so a top-level -v/--debug stays
    kw = {} if top else {"default": argparse.SUPPRESS}
    p.add_argument("-v", "--verbose", action="store_true", help="more detail", **kw)
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors", **kw)


def _add_encrypt(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encrypt", metavar="KEYFILE", default=None,
                   help="encrypt the image with the key in KEYFILE (AES-256-GCM; 32 bytes "
                        "raw, hex or base64, mode 0600)")


def _add_restore_policy(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", "--encrypt", dest="key", metavar="KEYFILE", default=None,
                   help="key file of an encrypted image")
    p.add_argument("--max-privilege", metavar="SPEC", default=None,
                   help="refuse an image whose recorded credentials exceed SPEC: "
                        "'unprivileged', 'uid>=N', 'gid>=N', 'caps=CAP_A,CAP_B' (combine "
                        "with spaces)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Checkpoint/restart for LXC and libvirt-LXC containers. "
                "All commands need root.")
    _add_common(p, top=True)
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    # --- tree -------------------------------------------------------------------------------
    tree = sub.add_parser("tree", help="checkpoint/restore any process tree")
    tsub = tree.add_subparsers(dest="tree_cmd", metavar="ACTION", parser_class=_Parser)
    tsub.required = True
    d = tsub.add_parser("dump", help="checkpoint the tree rooted at PID into IMAGE")
    d.add_argument("pid", type=int, metavar="PID")
    d.add_argument("image", metavar="IMAGE")
    d.add_argument("--leave-running", action="store_true",
                   help="resume the tree after the dump instead of killing it")
    d.add_argument("--progress", action="store_true", help="show a progress bar on a tty")
    d.add_argument("--print-stats", action="store_true", help="print dump statistics as JSON")
    d.add_argument("--compress", choices=["zstd"], default=None, help="compress page data")
    d.add_argument("--compress-level", type=int, default=3, help="zstd level (default 3)")
    d.add_argument("--tcp-established", action="store_true",
                   help="checkpoint established TCP connections (TCP_REPAIR)")
    _add_encrypt(d)
    _add_common(d)
    r = tsub.add_parser("restore", help="recreate the tree recorded in IMAGE")
    r.add_argument("image", metavar="IMAGE")
    r.add_argument("--pidfile", metavar="FILE", help="write the host pid of the root here")
    r.add_argument("--print-stats", action="store_true", help="print restore statistics as JSON")
    r.add_argument("--progress", action="store_true", help="show a progress bar on a tty")
    _add_restore_policy(r)
    _add_common(r)

    # --- lxc ---------------------------------------------------------------------------------
    lx = sub.add_parser("lxc", help="checkpoint/restore LXC containers")
    lsub = lx.add_subparsers(dest="lxc_cmd", metavar="ACTION", parser_class=_Parser)
    lsub.required = True
    lc = lsub.add_parser("checkpoint", help="checkpoint container NAME into DIR")
    lc.add_argument("name", metavar="NAME")
    lc.add_argument("dir", metavar="DIR")
    lc.add_argument("--stop", action="store_true", help="stop the container afterwards")
    lc.add_argument("-P", "--lxcpath", default=None, help="LXC path")
    lc.add_argument("--compress", choices=["zstd"], default=None, help="compress page data")
    lc.add_argument("--tcp-established", action="store_true",
                    help="checkpoint established TCP connections (TCP_REPAIR)")
    _add_encrypt(lc)
    _add_common(lc)
    lr = lsub.add_parser("restore", help="restore container NAME from DIR")
    lr.add_argument("name", metavar="NAME")
    lr.add_argument("dir", metavar="DIR")
    lr.add_argument("-P", "--lxcpath", default=None, help="LXC path")
    _add_restore_policy(lr)
    _add_common(lr)
    # internal (not listed): spawned by hooks/lxc/start-host on a plain lxc-start
    lrs = lsub.add_parser("resume")
    lrs.add_argument("name", metavar="NAME")
    lrs.add_argument("--takeover-pid", type=int, required=True, metavar="PID")
    lrs.add_argument("--report-fd", type=int, default=None, metavar="FD")
    lrs.add_argument("-P", "--lxcpath", default=None, help="LXC path")
    _add_common(lrs)

    # --- virsh (libvirt LXC domains) ---------------------------------------------------------
    vs = sub.add_parser("virsh", help="virsh-style save/restore of libvirt LXC domains")
    vsub = vs.add_subparsers(dest="virsh_cmd", metavar="ACTION", parser_class=_Parser)
    vsub.required = True

    def vparser(name, help_):
        p = vsub.add_parser(name, help=help_)
        p.add_argument("-c", "--connect", metavar="URI", default=None,
                       help="hypervisor connection URI (default lxc:///system)")
        _add_common(p)
        return p
    v = vparser("save", "save a running domain to FILE")
    v.add_argument("domain", metavar="DOMAIN")
    v.add_argument("file", metavar="FILE")
    g = v.add_mutually_exclusive_group()
    g.add_argument("--running", action="store_true")
    g.add_argument("--paused", action="store_true")
    v.add_argument("--tcp-established", action="store_true",
                   help="checkpoint established TCP connections (TCP_REPAIR)")
    _add_encrypt(v)
    v = vparser("restore", "restore a domain from FILE")
    v.add_argument("file", metavar="FILE")
    g = v.add_mutually_exclusive_group()
    g.add_argument("--running", action="store_true")
    g.add_argument("--paused", action="store_true")
    _add_restore_policy(v)
    v = vparser("managedsave", "save a domain under lxc-cr's managed-save directory")
    v.add_argument("domain", metavar="DOMAIN")
    v = vparser("start", "start a domain, resuming its managed save if it has one")
    v.add_argument("domain", metavar="DOMAIN")
    v.add_argument("--force-boot", action="store_true", help="discard any managed save")
    v = vparser("managedsave-remove", "remove a domain's managed save")
    v.add_argument("domain", metavar="DOMAIN")
    v = vparser("save-image-dumpxml", "print the domain XML stored in FILE")
    v.add_argument("file", metavar="FILE")
    v.add_argument("--key", metavar="KEYFILE", help="key file of an encrypted FILE")
    v = vparser("dominfo", "domain state and whether a managed save exists")
    v.add_argument("domain", metavar="DOMAIN")

    # --- hooks ---------------------------------------------------------------------------------
    hk = sub.add_parser("hooks", help="install, remove or show lxc-cr's manager hooks")
    hk.add_argument("hooks_cmd", choices=["install", "uninstall", "status"], metavar="ACTION",
                    help="install | uninstall | status")
    hk.add_argument("--container", action="append", metavar="NAME", default=None,
                    help="only (un)register the LXC start-host hook of these containers "
                         "(repeatable); default: every container, and the other hooks")
    hk.add_argument("-P", "--lxcpath", default=None, help="LXC path of those containers")
    _add_common(hk)

    # --- host (reboot without losing containers) -------------------------------------------
    ho = sub.add_parser("host", help="checkpoint everything before a host reboot, restore after")
    hsub = ho.add_subparsers(dest="host_cmd", metavar="ACTION", parser_class=_Parser)
    hsub.required = True
    for name, help_ in (("shutdown", "checkpoint (or shut down) every container per the policy"),
                        ("boot", "restore what the last host shutdown saved, in policy order")):
        h = hsub.add_parser(name, help=help_)
        h.add_argument("--config", metavar="FILE", default=None,
                       help="policy file (default $LXC_CR_CONFIG or /etc/lxc-cr/config.yaml)")
        h.add_argument("--only", nargs="+", metavar="NAME", default=None,
                       help="act only on these containers/domains")
        h.add_argument("--kind", choices=["lxc", "libvirt"], default=None,
                       help="only LXC containers or only libvirt domains")
        h.add_argument("--image-dir", metavar="DIR", default=None,
                       help="manifest and LXC images here instead of the policy's image_dir")
        _add_common(h)

    # --- inspect / check / convert ----------------------------------------------------------
    i = sub.add_parser("inspect", help="decode an image")
    i.add_argument("image", metavar="IMAGE")
    i.add_argument("--json", action="store_true", help="JSON (schemas/inspect.schema.json)")
    i.add_argument("--section", metavar="KIND", help="only records of this kind")
    i.add_argument("--key", metavar="KEYFILE", help="key file of an encrypted image")
    _add_common(i)
    c = sub.add_parser("check", help="preflight: list what cannot be checkpointed")
    c.add_argument("target", metavar="TARGET", help="PID, lxc:NAME or libvirt:DOMAIN")
    _add_common(c)
    rc = sub.add_parser("recover", help="thaw what a killed lxc-cr left frozen, remove its "
                        "partial images")
    _add_common(rc)
    cv = sub.add_parser("convert", help="rewrite an older image as the current format")
    cv.add_argument("src", metavar="IN")
    cv.add_argument("dst", metavar="OUT")
    cv.add_argument("--key", metavar="KEYFILE", help="key file of an encrypted IN")
    _add_encrypt(cv)
    _add_common(cv)
    return p


def _run(args) -> int:
    if args.cmd == "tree":
        from lxc_cr import commands_tree
        return commands_tree.run(args)
    if args.cmd == "lxc":
        from lxc_cr.runtime import lxc as lxc_runtime
        return lxc_runtime.run(args)
    if args.cmd == "virsh":
        from lxc_cr.runtime import libvirt as virt_runtime
        return virt_runtime.run(args)
    if args.cmd == "hooks":
        from lxc_cr import commands_hooks
        return commands_hooks.run(args)
    if args.cmd == "host":
        from lxc_cr import host
        return host.run(args)
    if args.cmd == "inspect":
        from lxc_cr.image import inspect as image_inspect
        return image_inspect.run(args)
    if args.cmd == "convert":
        from lxc_cr.image import convert as image_convert
        return image_convert.run(args)
    if args.cmd == "recover":
        from lxc_cr import intent
        return intent.run(args)
    if args.cmd == "check":
        from lxc_cr import commands_check
        return commands_check.run(args)
    raise AssertionError(args.cmd)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from lxc_cr.errors import LxcCrError
    try:
        return _run(args) or 0
    except LxcCrError as e:
        if getattr(args, "debug", False):
            import traceback
            traceback.print_exc()
        sys.stderr.write(f"{PROG}: error: {e}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: error: interrupted\n")
        return 1
    except BrokenPipeError:
        return 1
    except Exception as e:  # a bug: still one line, never a bare traceback
        if getattr(args, "debug", False):
            import traceback
            traceback.print_exc()
        sys.stderr.write(f"{PROG}: error: internal error: {type(e).__name__}: {e}\n")
        return 1


def lxc_checkpoint_main(argv: list[str] | None = None) -> int:
    """``lxc-checkpoint`` with LXC's flags (-n -D -s -r -v -d -F -P)."""
    p = argparse.ArgumentParser(prog="lxc-checkpoint",
                                description="Checkpoint and restore LXC containers (lxc-cr engine).")
    p.add_argument("-n", "--name", required=True, help="container name")
    p.add_argument("-D", "--checkpoint-dir", required=True, help="checkpoint directory")
    p.add_argument("-s", "--stop", action="store_true", help="stop the container after checkpoint")
    p.add_argument("-r", "--restore", action="store_true", help="restore the container")
    p.add_argument("-v", "--verbose", action="store_true", help="verbose output")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-d", "--daemon", action="store_true", help="restore in the background (default)")
    g.add_argument("-F", "--foreground", action="store_true", help="restore in the foreground")
    p.add_argument("-P", "--lxcpath", default=None, help="LXC path")
    p.add_argument("--encrypt", metavar="KEYFILE", default=None,
                   help="lxc-cr extension: encrypt the image (or, with -r, decrypt it) "
                        "with the key in KEYFILE")
    p.add_argument("--max-privilege", metavar="SPEC", default=None,
                   help="lxc-cr extension, with -r: refuse an image whose credentials "
                        "exceed SPEC")
    args = p.parse_args(argv)
    from lxc_cr.errors import LxcCrError
    try:
        from lxc_cr.runtime import lxc as lxc_runtime
        return lxc_runtime.lxc_checkpoint(args) or 0
    except LxcCrError as e:
        sys.stderr.write(f"{PROG}: error: {args.name}: {e}\n")
        return e.exit_code
    except ImportError as e:
        sys.stderr.write(f"{PROG}: error: LXC support unavailable: {e}\n")
        return 1


def _as_process(entry) -> None:
    """Run ``entry()`` as the whole life of this process, which ends with its exit code.

    - The cyclic garbage collector starts at 100 000 new objects instead of 700.  A busybox
      checkpoint allocates about that many, almost none of them in reference cycles, and
      the default threshold ran 57-75 collections in it: 10-15 ms.
    - The process ends with os._exit once stdout and stderr are flushed, skipping the
      interpreter's teardown (freeing every module and object: 30-45 ms).  Nothing of
      lxc-cr's needs it: images, intent records and pid files are written, fsynced and
      closed before a command returns; lxc-cr registers no atexit handler; the threads
      left are idle (the page reader) or daemons.

    A SystemExit (usage errors, --help) still ends the process the ordinary way."""
    import gc
    import os
    gc.set_threshold(100_000, 10, 10)
    code = entry()
    try:
        sys.stdout.flush()
    except BrokenPipeError:             # as main() treats it: exit 1, no message
        code = code or 1
    try:
        sys.stderr.flush()
    except OSError:
        pass
    os._exit(code)


def run() -> None:
    """The ``lxc-cr`` command."""
    _as_process(main)


def run_lxc_checkpoint() -> None:
    """The ``lxc-checkpoint`` command."""
    _as_process(lxc_checkpoint_main)


if __name__ == "__main__":
    run()
