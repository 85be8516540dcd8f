"""Can this host run an image?  CPU xsave features and the vdso, checked before any process
exists (restore step 0).

* **xsave features.** The image header records the XCR0 of the dumping CPU (the xsave
  feature bits its tasks' FPU state may use).  A restored thread gets its recorded xsave
  area back; a feature this CPU lacks cannot be restored (its state would be lost and
  instructions using it fault), so an image with a bit this CPU does not offer is refused,
  naming the missing bits.  This host's features: arch_prctl(ARCH_GET_XCOMP_SUPP), the
  user xfeatures the kernel supports, in lxc-cr's own process (no helper process).
* **vdso.** Tasks keep pointers into their vdso (glibc caches the address of
  ``__vdso_clock_gettime`` and friends at start-up).  Restore moves this kernel's vdso to
  the recorded address; with a vdso of another size or content those pointers would land
  in the middle of other code, so an image whose vdso fingerprint (size, sha256) differs
  from this kernel's is refused, naming both sizes and hashes.  The engine does not adapt
  (no proxy vdso, no relinking).  A v1 image recorded neither (0): the checks are skipped.
"""

from __future__ import annotations

import ctypes
import os

from lxc_cr.errors import IncompatibleImage
from lxc_cr.lightimport import sha256

ARCH_GET_XCOMP_SUPP = 0x1021

# bit -> name of the xsave feature (arch/x86/include/asm/fpu/types.h, enum xfeature)
XFEATURE_NAMES = {
    0: "x87", 1: "SSE", 2: "AVX", 3: "MPX BNDREGS", 4: "MPX BNDCSR", 5: "AVX-512 opmask",
    6: "AVX-512 ZMM_Hi256", 7: "AVX-512 Hi16_ZMM", 8: "PT", 9: "PKRU", 10: "PASID",
    11: "CET user", 12: "CET supervisor", 13: "HDC", 14: "UINTR", 15: "LBR", 16: "HWP",
    17: "AMX TILECFG", 18: "AMX TILEDATA", 19: "APX",
}


def xfeature_names(mask: int) -> str:
    """``bit 9 PKRU, bit 17 AMX TILECFG`` for a feature mask."""
    out = []
    for bit in range(64):
        if mask >> bit & 1:
            out.append(f"bit {bit} {XFEATURE_NAMES.get(bit, 'unknown')}")
    return ", ".join(out)


def xstate_xcr0(xstate: bytes) -> int:
    """XCR0 as PTRACE_GETREGSET NT_X86_XSTATE reports it: the u64 at offset 464 of the
    fxsave area's software-reserved bytes (the offset gdb reads it from too)."""
    if len(xstate) >= 472:
        return int.from_bytes(xstate[464:472], "little")
    return 0


def host_xfeatures() -> int:
    """The xsave features this CPU and kernel offer to user space."""
    from lxc_cr.kernel import sys as ksys
    mask = ctypes.c_uint64(0)
    ksys.syscall("arch_prctl", ARCH_GET_XCOMP_SUPP, ctypes.addressof(mask))
    return mask.value


def host_vdso() -> tuple[int, bytes]:
    """(size, sha256) of this kernel's vdso, read from our own mapping."""
    with open("/proc/self/maps") as f:
        for line in f:
            if line.rstrip().endswith("[vdso]"):
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                fd = os.open("/proc/self/mem", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    return hi - lo, sha256(os.pread(fd, hi - lo, lo)).digest()
                finally:
                    os.close(fd)
    return 0, b"\0" * 32


def check(header, path: str) -> None:
    """Raise IncompatibleImage (exit 2) if this host cannot run the image ``header``."""
    want = getattr(header, "xcr0", 0) or 0
    if want:
        here = host_xfeatures()
        missing = want & ~here
        if missing:
            raise IncompatibleImage(
                path, f"the image needs xsave features this CPU lacks: {missing:#x} "
                f"({xfeature_names(missing)}); image XCR0 {want:#x}, this CPU {here:#x}")
    size = getattr(header, "vdso_size", 0) or 0
    if size:
        here_size, here_hash = host_vdso()
        digest = bytes(header.vdso_hash)
        if (here_size, here_hash) != (size, digest):
            raise IncompatibleImage(
                path, f"the vdso differs from this kernel's: image {size} bytes sha256 "
                f"{digest.hex()[:16]}, this kernel {here_size} bytes sha256 "
                f"{here_hash.hex()[:16]} (image taken on kernel {header.kernel}, this is "
                f"{os.uname().release})")
