"""A seccomp filter for every bubblewrap sandbox: the kernel interfaces tools never need.

bwrap loads a compiled classic-BPF program from a file descriptor (``--seccomp
FD``) right before it runs the sandboxed command, after setting
``PR_SET_NO_NEW_PRIVS`` (which it always does). This module assembles that
program itself: a few dozen ``struct sock_filter`` instructions, no libseccomp.

What the filter does, for every system call of every process in the sandbox:

1. **Architecture.** ``seccomp_data.arch`` must be x86_64 or aarch64; anything
   else (the i386 ABI reached through ``int 0x80`` from an x86_64 process, 32-bit
   ARM on aarch64) kills the process. So does an x86_64 call with the x32 bit
   set (x32 syscall numbers would otherwise slip past the x86_64 table). No
   legitimate tool uses either, and each ABI has its own numbers that the table
   below does not cover: a kill is the only safe answer.
2. **Denied calls** return ``EPERM``: namespaces (``unshare``, ``setns``, and
   ``clone`` with any ``CLONE_NEW*`` flag), io_uring, tracing and other
   processes' memory, eBPF, perf events, the kernel keyring, every mount API,
   swap, reboot, kexec, kernel modules, accounting, quotas, userfaultfd,
   ``personality`` other than the default or a query, port I/O, and a few more
   that only administrators use (clock setting, host names, ``chroot``, file
   handles). Most already need a capability the sandbox does not have; the
   filter closes them even where a kernel bug would let them through.
3. ``clone3`` returns ``ENOSYS``: its flags live in memory, which seccomp cannot
   read, and glibc (threads, ``fork``, ``posix_spawn``) falls back to ``clone``
   on ``ENOSYS``, whose flags the filter does check.
4. Everything else is allowed, including the Landlock calls the runner uses and
   plain ``clone`` (threads, ``fork``, ``subprocess``, ``multiprocessing``).

Denied calls fail like any other failing system call: the tool sees an
``OSError`` and the caller a normal error outcome.
"""

from __future__ import annotations

import errno
import logging
import os
import platform
import struct
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

logger = logging.getLogger("insitu.sandbox")

# -- constants from linux/audit.h, linux/seccomp.h, linux/filter.h, linux/sched.h ------

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
#: Syscall numbers of the x32 ABI carry this bit (and arrive with AUDIT_ARCH_X86_64).
X32_SYSCALL_BIT = 0x40000000

SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000

#: Offsets inside ``struct seccomp_data`` (both architectures are little-endian).
_OFFSET_NR = 0
_OFFSET_ARCH = 4
_OFFSET_ARG0_LOW = 16

# Classic-BPF opcodes (class | size | mode, or class | op | source).
_LD_W_ABS = 0x00 | 0x00 | 0x20  # BPF_LD | BPF_W | BPF_ABS
_JMP_JEQ_K = 0x05 | 0x10 | 0x00  # BPF_JMP | BPF_JEQ | BPF_K
_JMP_JGE_K = 0x05 | 0x30 | 0x00  # BPF_JMP | BPF_JGE | BPF_K
_JMP_JSET_K = 0x05 | 0x40 | 0x00  # BPF_JMP | BPF_JSET | BPF_K
_RET_K = 0x06 | 0x00  # BPF_RET | BPF_K

_SOCK_FILTER = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k
_MAX_INSTRUCTIONS = 4096  # BPF_MAXINSNS

#: Every namespace flag ``clone`` accepts: NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER,
#: NEWPID, NEWNET. (CLONE_NEWTIME only exists for unshare and clone3.)
CLONE_NAMESPACE_FLAGS = (
    0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
)
#: ``personality`` arguments that leave the process as it is: PER_LINUX, and the query.
ALLOWED_PERSONALITIES = (0x00000000, 0xFFFFFFFF)

# -- system call numbers ----------------------------------------------------------------
# From arch/x86/entry/syscalls/syscall_64.tbl and include/uapi/asm-generic/unistd.h
# (aarch64 uses the generic table). tests/test_sandbox_walls.py checks them against
# the installed kernel headers when linux-libc-dev is present.

#: Calls denied with EPERM, by name: x86_64 number, aarch64 number (None: no such call).
DENIED_SYSCALLS: Mapping[str, tuple[int | None, int | None]] = {
    # Namespaces: a tool must stay in the namespaces bwrap gave it.
    "unshare": (272, 97),
    "setns": (308, 268),
    # io_uring: a second system-call interface that seccomp cannot see into.
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    # Reading or changing other processes.
    "ptrace": (101, 117),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "process_madvise": (440, 440),
    "pidfd_getfd": (438, 438),
    "kcmp": (312, 272),
    "move_pages": (279, 239),
    "migrate_pages": (256, 238),
    # Kernel attack surface with a long record of exploits.
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "userfaultfd": (323, 282),
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "modify_ldt": (154, None),
    "uselib": (134, None),
    "syslog": (103, 116),
    # Mounting, old API and new.
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "chroot": (161, 51),
    "open_tree": (428, 428),
    "move_mount": (429, 429),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "mount_setattr": (442, 442),
    # Files by handle (bypasses path checks: the "shocker" escape).
    "name_to_handle_at": (303, 264),
    "open_by_handle_at": (304, 265),
    "fanotify_init": (300, 262),
    # Administration of the machine.
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "reboot": (169, 142),
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "acct": (163, 89),
    "quotactl": (179, 60),
    "quotactl_fd": (443, 443),
    "settimeofday": (164, 170),
    "clock_settime": (227, 112),
    "clock_adjtime": (305, 266),
    "adjtimex": (159, 171),
    "sethostname": (170, 161),
    "setdomainname": (171, 162),
    "iopl": (172, None),
    "ioperm": (173, None),
}
#: ``clone``: allowed unless a namespace flag is set in its first argument.
CLONE = (56, 220)
#: ``clone3``: ENOSYS, so that glibc falls back to ``clone``.
CLONE3 = (435, 435)
#: ``personality``: allowed for the default persona and the query only.
PERSONALITY = (135, 92)

#: (name, AUDIT_ARCH value, index into the number pairs above).
ARCHITECTURES = (("x86_64", AUDIT_ARCH_X86_64, 0), ("aarch64", AUDIT_ARCH_AARCH64, 1))


# -- a tiny assembler -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Insn:
    code: int
    k: int = 0
    jt: str | int = 0
    jf: str | int = 0


class _Program:
    """Instructions with symbolic jump targets, resolved into relative offsets."""

    def __init__(self) -> None:
        self.items: list[_Insn | str] = []

    def label(self, name: str) -> None:
        self.items.append(name)

    def load(self, offset: int) -> None:
        self.items.append(_Insn(_LD_W_ABS, offset))

    def jump(self, code: int, k: int, jt: str | int = 0, jf: str | int = 0) -> None:
        self.items.append(_Insn(code, k, jt, jf))

    def ret(self, value: int) -> None:
        self.items.append(_Insn(_RET_K, value))

    def assemble(self) -> bytes:
        positions: dict[str, int] = {}
        count = 0
        for item in self.items:
            if isinstance(item, str):
                if item in positions:
                    raise ValueError(f"duplicate label {item!r}")
                positions[item] = count
            else:
                count += 1
        if count > _MAX_INSTRUCTIONS:
            raise ValueError(f"seccomp program too long ({count} instructions)")
        out = bytearray()
        index = 0
        for item in self.items:
            if isinstance(item, str):
                continue
            offsets = []
            for target in (item.jt, item.jf):
                # Jumps only go forward, relative to the next instruction.
                offset = target if isinstance(target, int) else positions[target] - index - 1
                if not 0 <= offset <= 255:
                    raise ValueError(f"jump out of range ({offset}) at instruction {index}")
                offsets.append(offset)
            out += _SOCK_FILTER.pack(item.code, offsets[0], offsets[1], item.k)
            index += 1
        return bytes(out)


def _errno(code: int) -> int:
    return SECCOMP_RET_ERRNO | (code & 0xFFFF)


def _architecture_block(program: _Program, name: str, column: int) -> None:
    """Emit the checks of one architecture; A holds nothing useful on entry."""
    program.label(name)
    program.load(_OFFSET_NR)
    if name == "x86_64":
        program.jump(_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1)
        program.ret(SECCOMP_RET_KILL_PROCESS)
    eperm = _errno(errno.EPERM)
    for numbers in DENIED_SYSCALLS.values():
        number = numbers[column]
        if number is None:
            continue
        # Each compare is followed by its own return: no jump ever goes far.
        program.jump(_JMP_JEQ_K, number, 0, 1)
        program.ret(eperm)
    program.jump(_JMP_JEQ_K, CLONE3[column], 0, 1)
    program.ret(_errno(errno.ENOSYS))
    # clone: look at the flags (the low word suffices: every CLONE_NEW* bit is there).
    program.jump(_JMP_JEQ_K, CLONE[column], 0, 4)
    program.load(_OFFSET_ARG0_LOW)
    program.jump(_JMP_JSET_K, CLONE_NAMESPACE_FLAGS, 0, 1)
    program.ret(eperm)
    program.ret(SECCOMP_RET_ALLOW)
    # personality(unsigned int): the kernel ignores the high word.
    allowed = len(ALLOWED_PERSONALITIES)
    program.jump(_JMP_JEQ_K, PERSONALITY[column], 0, allowed + 2)
    program.load(_OFFSET_ARG0_LOW)
    for position, value in enumerate(ALLOWED_PERSONALITIES):
        program.jump(_JMP_JEQ_K, value, allowed - position, 0)
    program.ret(eperm)
    # Also where every call that is not personality lands (the jump above).
    program.ret(SECCOMP_RET_ALLOW)


def build_filter() -> bytes:
    """Assemble the sandbox's seccomp program.

    Returns:
        The program as consecutive ``struct sock_filter`` records, in the form
        bwrap's ``--seccomp`` reads (what ``seccomp_export_bpf`` writes).
    """
    program = _Program()
    program.load(_OFFSET_ARCH)
    for name, audit_arch, _ in ARCHITECTURES:
        program.jump(_JMP_JEQ_K, audit_arch, name, 0)
    program.ret(SECCOMP_RET_KILL_PROCESS)
    for name, _, column in ARCHITECTURES:
        _architecture_block(program, name, column)
    return program.assemble()


_filter: bytes | None = None


def sandbox_filter() -> bytes:
    """Return the compiled filter (assembled once per process)."""
    global _filter
    if _filter is None:
        _filter = build_filter()
    return _filter


def unavailable_reason(machine: str | None = None, actions: str | None = None) -> str:
    """Why the filter cannot be used here ('' when it can).

    On an architecture without a table here every call would be killed by the
    architecture check; a kernel without seccomp filters would make bwrap fail.
    Either way the sandbox runs without the filter and says so.

    Args:
        machine: ``platform.machine()`` value (default: this machine's).
        actions: Text of ``/proc/sys/kernel/seccomp/actions_avail`` (default: read it).
    """
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "aarch64", "arm64"):
        return f"no system-call table for {machine} (only x86_64 and aarch64 are known)"
    if actions is None:
        try:
            with open("/proc/sys/kernel/seccomp/actions_avail", encoding="ascii") as handle:
                actions = handle.read()
        except OSError:
            return "this kernel offers no seccomp filters"
    missing = {"errno", "kill_process", "allow"} - set(actions.split())
    if missing:
        return f"this kernel's seccomp lacks the action(s) {', '.join(sorted(missing))}"
    return ""


def supported(machine: str | None = None) -> bool:
    """Whether the filter can be applied on this machine (see :func:`unavailable_reason`)."""
    return not unavailable_reason(machine)


def filter_pipe(program: bytes | None = None) -> int:
    """Return the read end of a pipe holding the program, for ``bwrap --seccomp``.

    The write end is closed already, so bwrap reads the whole program and then
    end of file. The caller passes the fd to bwrap and closes it afterwards.

    Args:
        program: The program (default: :func:`sandbox_filter`).
    """
    data = sandbox_filter() if program is None else program
    read_end, write_end = os.pipe()
    try:
        # A few kilobytes: far below the pipe buffer, so this write never blocks.
        view = memoryview(data)
        while view:
            view = view[os.write(write_end, view) :]
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    return read_end


def denied_names(architecture: str = "x86_64") -> Iterable[str]:
    """Names of the calls the filter refuses on ``architecture`` (for reports and tests)."""
    column = 0 if architecture == "x86_64" else 1
    return [name for name, numbers in DENIED_SYSCALLS.items() if numbers[column] is not None]


_warned = False
_warn_lock = threading.Lock()


def warn_unsupported_once() -> None:
    """Log once per process that this machine's sandboxes run without the filter."""
    global _warned
    with _warn_lock:
        if _warned:
            return
        _warned = True
    logger.warning(
        "INSITU SANDBOX: no seccomp filter: %s; tools can use namespaces, io_uring, ptrace and "
        "the other calls it refuses",
        unavailable_reason(),
    )
