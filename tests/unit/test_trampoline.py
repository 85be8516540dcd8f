"""The dump's trampoline (kernel.ptrace.trampoline): its layout and the restart rewind.
Its behaviour on real threads whose tracer dies: tests/integration/test_tracer_death.py."""

import struct

from lxc_cr.kernel.ptrace import TRAMPOLINE_SIZE, TRAMPOLINE_USED, Regs, trampoline


def slots(code: bytes) -> dict:
    v = struct.unpack_from("<19Q", code, 0x80)
    names = ["mask", "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10",
             "r11", "r12", "r13", "r14", "r15", "eflags", "rsp", "rip"]
    return dict(zip(names, v))


def regs(**kw) -> Regs:
    r = Regs()
    for k, v in kw.items():
        setattr(r, k, v & (2 ** 64 - 1))
    return r


def test_layout():
    t = trampoline(regs(rbx=1, rbp=2, r15=3, rsp=0x7ffd0000, rip=0x401000, eflags=0x246,
                        orig_rax=-1, rax=5), 0x4000)
    assert len(t) == TRAMPOLINE_USED <= TRAMPOLINE_SIZE
    assert t[:2] == b"\x0f\x05"                      # the injected call's syscall first
    assert slots(t) == dict(mask=0x4000, rax=5, rbx=1, rcx=0, rdx=0, rsi=0, rdi=0, rbp=2, r8=0,
                            r9=0, r10=0, r11=0, r12=0, r13=0, r14=0, r15=3,
                            eflags=0x246, rsp=0x7ffd0000, rip=0x401000)


def test_interrupted_syscalls_are_rewound_like_the_kernel_does():
    for err in (512, 513, 514):                       # -ERESTARTSYS, NOINTR, NOHAND
        s = slots(trampoline(regs(rax=-err, orig_rax=7, rip=0x1002), 0))
        assert (s["rax"], s["rip"]) == (7, 0x1000)
    s = slots(trampoline(regs(rax=-516, orig_rax=35, rip=0x1002), 0))   # RESTART_RESTARTBLOCK
    assert (s["rax"], s["rip"]) == (219, 0x1000)                       # restart_syscall
    s = slots(trampoline(regs(rax=-4, orig_rax=7, rip=0x1002), 0))     # EINTR: returned as is
    assert (s["rax"], s["rip"]) == (2 ** 64 - 4, 0x1002)
    s = slots(trampoline(regs(rax=-512, orig_rax=-1, rip=0x1002), 0))  # not in a syscall
    assert (s["rax"], s["rip"]) == (2 ** 64 - 512, 0x1002)
