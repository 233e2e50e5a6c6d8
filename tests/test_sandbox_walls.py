"""The sandbox's outer walls: the seccomp filter and the network of network-declaring tools.

Every network test stays on this machine. The "private" and "public" hosts are
network namespaces these tests create, each joined to the host by a veth pair
(a private 10.x address for one, a TEST-NET-3 address, 203.0.113.0/24, which is
never routed on the internet, for the others), with a tiny HTTP server inside.

These tests need bubblewrap, root (to create namespaces and veth pairs) and
slirp4netns. Locally they are skipped with the reason when something is
missing; under CI (``CI=true``) a missing piece fails them instead.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import re
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from insitu.sandbox import ErrorKind, Sandbox, SandboxSettings, netns, probe_backend, seccomp
from insitu.sandbox import backend as backends
from insitu.testing.probe import probe_tool

INFO = probe_backend()
ROOT = backends.is_root()
IN_CI = os.environ.get("CI", "").lower() == "true"
MACHINE = platform.machine().lower()
X86_64 = MACHINE in ("x86_64", "amd64")
COLUMN = 0 if X86_64 else 1

SETTINGS: dict[str, Any] = {"timeout_s": 10.0, "grace_s": 2.0, "processes": 64}


def require(condition: bool, reason: str) -> None:
    """Skip (locally) or fail (in CI) when a precondition does not hold."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def require_bwrap() -> None:
    require(INFO.bwrap_works, f"bwrap backend unavailable here: {INFO.bwrap_error}")
    require(seccomp.supported(), f"no seccomp filter here: {seccomp.unavailable_reason()}")


def require_network() -> None:
    require_bwrap()
    require(ROOT, "creating test network namespaces needs root")
    helper, problem = netns.find_helper()
    require(helper is not None, problem)


#: Prepended to every wall probe: ``call(number, *args)`` makes a raw system call and
#: returns its result, or the errno's name when it fails.
SYSCALL = """
libc = ctypes.CDLL(None, use_errno=True)
def call(number, *args):
    result = libc.syscall(number, *args)
    return errno.errorcode.get(ctypes.get_errno(), "?") if result == -1 else result
"""


def tool(body: str, network: bool = False) -> str:
    """A tool whose run() executes ``body`` and returns {"value": value}."""
    modules = "ctypes, errno, json, os, socket, subprocess, sys, threading, time"
    source = SYSCALL + textwrap.dedent(body).strip()
    return probe_tool(source, name="wall_probe", modules=modules, network=network)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    require_bwrap()
    with Sandbox(SandboxSettings(backend="bwrap", **SETTINGS)) as sb:
        yield sb


# -- the filter program itself ---------------------------------------------------------


def test_program_is_well_formed_sock_filter_records() -> None:
    program = seccomp.build_filter()
    assert len(program) % 8 == 0 and 0 < len(program) // 8 <= 4096
    # The last instruction of every path is a return; the first loads the architecture.
    code, jt, jf, k = seccomp._SOCK_FILTER.unpack(program[:8])
    assert (code, k) == (0x20, 4)
    for index in range(len(program) // 8):
        code, jt, jf, k = seccomp._SOCK_FILTER.unpack(program[index * 8 : index * 8 + 8])
        assert index + 1 + max(jt, jf) < len(program) // 8 or code == 0x06
    assert seccomp.sandbox_filter() == program


def test_the_filter_is_only_used_where_it_can_work() -> None:
    actions = "kill_process kill_thread trap errno user_notif trace log allow"
    assert seccomp.unavailable_reason("x86_64", actions) == ""
    assert seccomp.unavailable_reason("aarch64", actions) == ""
    assert "riscv64" in seccomp.unavailable_reason("riscv64", actions)
    assert "kill_process" in seccomp.unavailable_reason("x86_64", "errno allow")


def _header_table(path: Path) -> dict[str, int]:
    table: dict[str, int] = {}
    for match in re.finditer(r"#define __NR_(\w+)\s+(\d+)", path.read_text()):
        table.setdefault(match.group(1), int(match.group(2)))
    return table


def test_syscall_numbers_match_the_kernel_headers() -> None:
    x86_header = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
    generic_header = Path("/usr/include/asm-generic/unistd.h")
    native = x86_header if X86_64 else generic_header
    require(native.is_file(), "kernel headers not installed (apt-get install linux-libc-dev)")
    calls = dict(seccomp.DENIED_SYSCALLS)
    calls.update(clone=seccomp.CLONE, clone3=seccomp.CLONE3, personality=seccomp.PERSONALITY)
    # aarch64 uses the generic table; x86_64 headers exist only on x86_64 machines.
    for column, header in ((0, x86_header), (1, generic_header)):
        if not header.is_file():
            continue
        table = _header_table(header)
        for name, numbers in calls.items():
            assert table.get(name) == numbers[column], (header.name, name)
    # Landlock, which the runner needs, is never denied.
    assert {"landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self"}.isdisjoint(
        calls
    )


# -- the filter at work ------------------------------------------------------------------

ESCAPES = """
numbers = json.loads(input.arg)
value = {
    "unshare_user": call(numbers["unshare"], 0x10000000),
    "unshare_net": call(numbers["unshare"], 0x40000000),
    "setns": call(numbers["setns"], 0, 0),
    "clone_newuser": call(numbers["clone"], 0x10000000 | 17, 0, 0, 0, 0),
    "clone3": call(numbers["clone3"], 0, 0),
    "io_uring_setup": call(numbers["io_uring_setup"], 8, ctypes.create_string_buffer(120)),
    "ptrace": call(numbers["ptrace"], 0, 0, 0, 0),
    "process_vm_readv": call(numbers["process_vm_readv"], 1, 0, 0, 0, 0, 0),
    "bpf": call(numbers["bpf"], 0, 0, 0),
    "perf_event_open": call(numbers["perf_event_open"], 0, 0, -1, -1, 0),
    "keyctl": call(numbers["keyctl"], 0, 0, 0, 0, 0),
    "userfaultfd": call(numbers["userfaultfd"], 0),
    "mount": call(numbers["mount"], b"none", b"/tmp", b"tmpfs", 0, None),
    "fsopen": call(numbers["fsopen"], b"tmpfs", 0),
    "personality_no_aslr": call(numbers["personality"], 0x0040000),
    "personality_query": call(numbers["personality"], 0xFFFFFFFF),
}
"""


def _numbers() -> str:
    import json

    names = [
        "unshare",
        "setns",
        "io_uring_setup",
        "ptrace",
        "process_vm_readv",
        "bpf",
        "perf_event_open",
        "keyctl",
        "userfaultfd",
        "mount",
        "fsopen",
    ]
    numbers = {name: seccomp.DENIED_SYSCALLS[name][COLUMN] for name in names}
    numbers.update(
        clone=seccomp.CLONE[COLUMN],
        clone3=seccomp.CLONE3[COLUMN],
        personality=seccomp.PERSONALITY[COLUMN],
    )
    return json.dumps(numbers)


@pytest.mark.parametrize("warm", [True, False], ids=["warm", "cold"])
def test_escape_calls_are_refused(sandbox: Sandbox, workdir: Path, warm: bool) -> None:
    out = sandbox.call(tool(ESCAPES), {"arg": _numbers()}, workdir=workdir, warm=warm)
    assert out.ok, out
    value = out.output["value"]
    expected = {name: "EPERM" for name in value if name != "personality_query"}
    expected["clone3"] = "ENOSYS"  # so that glibc falls back to clone
    assert {k: v for k, v in value.items() if k != "personality_query"} == expected
    assert value["personality_query"] == 0  # PER_LINUX: querying stays allowed


def test_filter_off_restores_the_old_path(workdir: Path) -> None:
    require_bwrap()
    body = """
numbers = json.loads(input.arg)
mode = [line.split()[1] for line in open("/proc/self/status") if line.startswith("Seccomp:")]
value = [mode[0], call(numbers["unshare"], 0x10000000)]
"""
    with Sandbox(SandboxSettings(backend="bwrap", seccomp=False, **SETTINGS)) as sb:
        out = sb.call(tool(body), {"arg": _numbers()}, workdir=workdir)
    assert out.ok, out
    # No filter at all; where the kernel allows unprivileged user namespaces, the
    # call that the filter refuses then succeeds (the escape it closes).
    assert out.output["value"][0] == "0"
    assert out.output["value"][1] in (0, "EPERM", "ENOSPC", "EUSERS")


def test_a_refused_call_is_a_normal_tool_error(sandbox: Sandbox, workdir: Path) -> None:
    body = """
if hasattr(os, "unshare"):
    os.unshare(os.CLONE_NEWUSER)
else:
    if libc.unshare(0x10000000) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
value = "escaped"
"""
    out = sandbox.call(tool(body), {}, workdir=workdir)
    assert not out.ok and out.kind is ErrorKind.EXCEPTION, out
    assert "Operation not permitted" in out.message
    assert sandbox.call(tool("value = 1"), {}, workdir=workdir).output == {"value": 1}


def test_ordinary_tools_still_work(sandbox: Sandbox, workdir: Path) -> None:
    body = """
import multiprocessing, tempfile
results = []
thread = threading.Thread(target=lambda: results.append("thread"))
thread.start()
thread.join()
queue = multiprocessing.Queue()
worker = multiprocessing.Process(target=queue.put, args=("process",))
worker.start()
from_process = queue.get(timeout=10)
worker.join()
pid = os.fork()
if pid == 0:
    os._exit(7)
forked = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
true = subprocess.run(["/usr/bin/true"]).returncode
child = subprocess.run([sys.executable, "-c", "print('child')"], capture_output=True, text=True)
with tempfile.TemporaryFile() as handle:
    handle.write(b"x")
landlock = call(444, None, ctypes.c_size_t(0), 1)
from concurrent.futures import ThreadPoolExecutor
with ThreadPoolExecutor(4) as pool:
    squares = list(pool.map(lambda n: n * n, range(5)))
value = [results[0], from_process, forked, true, child.stdout.strip(), squares,
         json.loads(json.dumps({"a": [1]})), landlock if landlock == "ENOSYS" else "landlock ok"]
"""
    out = sandbox.call(tool(body), {}, workdir=workdir)
    assert out.ok, out
    value = out.output["value"]
    assert value[:7] == ["thread", "process", 7, 0, "child", [0, 1, 4, 9, 16], {"a": [1]}]
    # Landlock is never refused by the filter (ENOSYS only on kernels without it).
    assert value[7] in ("landlock ok", "ENOSYS")


FOREIGN_ABI = """
import mmap
# x86_64 machine code: mov eax, {number}; {instruction}; ret
code = bytes([0xB8]) + ({number}).to_bytes(4, "little") + bytes({instruction}) + bytes([0xC3])
memory = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
memory.write(code)
address = ctypes.addressof(ctypes.c_char.from_buffer(memory))
value = ctypes.CFUNCTYPE(ctypes.c_long)(address)()
"""


@pytest.mark.parametrize(
    ("number", "instruction"),
    [
        pytest.param(20, [0xCD, 0x80], id="i386-int80-getpid"),
        pytest.param(0x40000000 | 39, [0x0F, 0x05], id="x32-getpid"),
    ],
)
def test_foreign_system_call_abis_kill_the_process(
    sandbox: Sandbox, workdir: Path, number: int, instruction: list[int]
) -> None:
    if not X86_64:
        pytest.skip("x86_64 machine code")
    body = FOREIGN_ABI.format(number=number, instruction=instruction)
    out = sandbox.call(tool(body), {}, workdir=workdir)
    assert not out.ok and out.kind is ErrorKind.CRASH, out
    assert "SIGSYS" in out.message or "killed" in out.message, out.message
    assert sandbox.call(tool("value = 2"), {}, workdir=workdir).output == {"value": 2}


def test_the_filter_reaches_the_worker_not_only_the_call(sandbox: Sandbox, workdir: Path) -> None:
    body = """
status = open("/proc/self/status").read()
parent = open(f"/proc/{os.getppid()}/status").read()
value = [line.split()[1] for text in (status, parent) for line in text.splitlines()
         if line.startswith("Seccomp:")]
"""
    out = sandbox.call(tool(body), {}, workdir=workdir)
    assert out.ok, out
    assert out.output["value"] == ["2", "2"]  # SECCOMP_MODE_FILTER in the call and its worker


# -- network: helpers that build the test hosts -------------------------------------------

SERVER = r"""
import http.server, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("hello from " + sys.argv[1]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@dataclass
class FakeHost:
    """A network namespace of ours, joined to the host by a veth pair, serving HTTP."""

    name: str
    address: str
    host_side_address: str
    port: int
    process: subprocess.Popen[str]
    link: str

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}/"


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=10)


@contextlib.contextmanager
def fake_host(name: str, host_address: str, peer_address: str, prefix: int) -> Iterator[FakeHost]:
    """Start an HTTP server in a fresh network namespace reachable at ``peer_address``."""
    process = subprocess.Popen(
        ["unshare", "--net", "--", sys.executable, "-I", "-c", SERVER, name],
        stdout=subprocess.PIPE,
        text=True,
    )
    link = f"isw{random.randrange(16**6):06x}"
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        pid = str(process.pid)
        _run("ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", pid)
        _run("ip", "addr", "add", f"{host_address}/{prefix}", "dev", link)
        _run("ip", "link", "set", link, "up")
        inside = ["nsenter", f"--target={pid}", "--net", "--", "ip"]
        _run(*inside, "addr", "add", f"{peer_address}/{prefix}", "dev", "eth0")
        _run(*inside, "link", "set", "eth0", "up")
        _run(*inside, "link", "set", "lo", "up")
        host = FakeHost(name, peer_address, host_address, port, process, link)
        # From the host itself the fake host is reachable: the walls are the sandbox's.
        deadline = time.monotonic() + 5
        while True:
            try:
                assert fetch_from_host(host.url) == f"hello from {name}"
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield host
    finally:
        process.kill()
        process.wait(5)
        # The veth pair dies with the namespace; this only covers a failed start.
        subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)


def fetch_from_host(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=3) as response:
        return response.read().decode()


@pytest.fixture(scope="module")
def private_host() -> Iterator[FakeHost]:
    require_network()
    octet = random.randrange(1, 250)
    with fake_host("private", f"10.213.{octet}.1", f"10.213.{octet}.2", 30) as host:
        yield host


@pytest.fixture(scope="module")
def public_hosts() -> Iterator[tuple[FakeHost, FakeHost]]:
    """Two hosts on TEST-NET-3 addresses (documentation-only, never routed anywhere)."""
    require_network()
    first, second = random.sample(range(1, 63), 2)
    with (
        fake_host("public", f"203.0.113.{4 * first + 1}", f"203.0.113.{4 * first + 2}", 30) as a,
        fake_host("other", f"203.0.113.{4 * second + 1}", f"203.0.113.{4 * second + 2}", 30) as b,
    ):
        yield a, b


@pytest.fixture(scope="module")
def host_server(greeting_server: Callable[[str], Any]) -> Iterator[int]:
    """A TCP server of the host on every address (0.0.0.0), greeting each client."""
    with greeting_server("0.0.0.0") as port:
        yield port


@pytest.fixture(scope="module")
def net_sandbox() -> Iterator[Sandbox]:
    require_network()
    with Sandbox(SandboxSettings(backend="bwrap", **SETTINGS)) as sb:
        yield sb


REACH = """
import urllib.request
results = {}
for target in input.arg:
    kind, host, port = target
    try:
        if kind == "http":
            with urllib.request.urlopen(f"http://{host}:{port}/", timeout=3) as response:
                results[f"{host}:{port}"] = response.read().decode()
        else:
            with socket.create_connection((host, port), timeout=3) as conn:
                results[f"{host}:{port}"] = conn.recv(100).decode()
    except Exception as exc:
        reason = getattr(exc, "reason", exc)
        results[f"{host}:{port}"] = "failed: " + type(reason).__name__ + ": " + str(reason)
value = results
"""


def reach(sb: Sandbox, workdir: Path, targets: list[tuple[str, str, int]], **kw: Any) -> dict:
    out = sb.call(tool(REACH, network=True), {"arg": targets}, workdir=workdir, network=True, **kw)
    assert out.ok, out
    return out.output["value"]


def _host_addresses() -> list[str]:
    return [
        str(net.network_address)
        for net in netns.host_local_networks()
        if net.prefixlen == 32 and not net.network_address.is_loopback
    ]


# -- network: the tests -----------------------------------------------------------------


@pytest.mark.parametrize("warm", [True, False], ids=["warm", "cold"])
def test_network_tool_reaches_a_public_host_but_not_the_hosts_loopback(
    net_sandbox: Sandbox,
    workdir: Path,
    public_hosts: tuple[FakeHost, FakeHost],
    host_server: int,
    warm: bool,
) -> None:
    public, _ = public_hosts
    # The host's loopback service is up (checked from the host) ...
    with socket.create_connection(("127.0.0.1", host_server), timeout=2) as conn:
        assert conn.recv(100) == b"hello from the host"
    targets = [("http", public.address, public.port), ("tcp", "127.0.0.1", host_server)]
    # Twice: a warm worker keeps its network from one call to the next.
    for _ in range(2):
        value = reach(net_sandbox, workdir, targets, warm=warm)
        assert value[f"{public.address}:{public.port}"] == "hello from public"
        # ... but the tool's 127.0.0.1 is its own loopback.
        assert value[f"127.0.0.1:{host_server}"].startswith("failed: "), value


def test_network_tool_cannot_reach_the_host_through_its_own_addresses(
    net_sandbox: Sandbox,
    workdir: Path,
    public_hosts: tuple[FakeHost, FakeHost],
    host_server: int,
) -> None:
    public, _ = public_hosts
    addresses = _host_addresses()
    assert public.host_side_address in addresses
    # The gateway of slirp4netns maps to the host's loopback unless disabled.
    addresses.append(str(netns.GATEWAY))
    value = reach(net_sandbox, workdir, [("tcp", a, host_server) for a in addresses])
    for address in addresses:
        with contextlib.suppress(OSError):
            if address != str(netns.GATEWAY):  # from the host, its addresses answer
                with socket.create_connection((address, host_server), timeout=2) as conn:
                    assert conn.recv(100) == b"hello from the host"
        assert value[f"{address}:{host_server}"].startswith("failed: "), value


def test_network_tool_cannot_reach_private_ranges(
    net_sandbox: Sandbox, workdir: Path, private_host: FakeHost
) -> None:
    # Reachable from the host ...
    assert fetch_from_host(private_host.url) == "hello from private"
    targets = [
        ("http", private_host.address, private_host.port),
        ("tcp", "169.254.169.254", 80),
        ("tcp", "172.16.0.1", 80),
        ("tcp", "192.168.0.1", 80),
        ("tcp", "100.64.0.1", 80),
        ("tcp", "0.0.0.0", 80),
    ]
    started = time.monotonic()
    value = reach(net_sandbox, workdir, targets)
    # ... never from the tool, and refused at once (no route), not after a timeout.
    assert all(result.startswith("failed: ") for result in value.values()), value
    assert time.monotonic() - started < 5
    assert "unreachable" in value[f"{private_host.address}:{private_host.port}"].lower() or (
        "no route" in value[f"{private_host.address}:{private_host.port}"].lower()
    )


def test_network_tool_cannot_change_its_routes(
    net_sandbox: Sandbox, workdir: Path, private_host: FakeHost
) -> None:
    body = f"""
import urllib.request
ip = "/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "/sbin/ip"
changed = subprocess.run([ip, "route", "del", "unreachable", "10.0.0.0/8"],
                         capture_output=True, text=True)
try:
    urllib.request.urlopen("{private_host.url}", timeout=3)
    reached = True
except Exception:
    reached = False
value = [changed.returncode, reached]
"""
    out = net_sandbox.call(tool(body, network=True), {}, workdir=workdir, network=True)
    assert out.ok, out
    assert out.output["value"][0] != 0 and out.output["value"][1] is False, out.output


def test_network_tool_gets_the_helpers_dns_and_tls_files(
    net_sandbox: Sandbox, workdir: Path
) -> None:
    body = """
import ssl
cas = ssl.create_default_context().cert_store_stats()["x509_ca"]
value = [open("/etc/resolv.conf").read(), cas > 0, socket.gethostbyname("localhost")]
"""
    out = net_sandbox.call(tool(body, network=True), {}, workdir=workdir, network=True)
    assert out.ok, out
    resolv, has_cas, localhost = out.output["value"]
    assert f"nameserver {netns.DNS_FORWARDER}" in resolv.splitlines()
    assert has_cas and localhost == "127.0.0.1"


def test_undeclared_network_still_has_none(
    net_sandbox: Sandbox, workdir: Path, public_hosts: tuple[FakeHost, FakeHost]
) -> None:
    public, _ = public_hosts
    body = f"""
try:
    socket.create_connection(("{public.address}", {public.port}), timeout=2).close()
    value = "connected"
except OSError as exc:
    value = "failed: " + str(exc)
"""
    out = net_sandbox.call(tool(body), {}, workdir=workdir)
    assert out.ok and out.output["value"].startswith("failed: "), out


def test_allow_list_limits_the_tool_to_the_listed_hosts(
    workdir: Path, public_hosts: tuple[FakeHost, FakeHost]
) -> None:
    allowed, other = public_hosts
    settings = SandboxSettings(backend="bwrap", network_allow=[allowed.address], **SETTINGS)
    with Sandbox(settings) as sb:
        value = reach(
            sb,
            workdir,
            [("http", allowed.address, allowed.port), ("http", other.address, other.port)],
        )
        resolv = sb.call(
            tool('value = open("/etc/resolv.conf").read()', network=True),
            {},
            workdir=workdir,
            network=True,
        )
    assert value[f"{allowed.address}:{allowed.port}"] == "hello from public"
    assert value[f"{other.address}:{other.port}"].startswith("failed: "), value
    assert "nameserver" not in resolv.output["value"]


def test_allow_list_never_opens_private_or_host_addresses(workdir: Path) -> None:
    require_network()
    settings = SandboxSettings(backend="bwrap", network_allow=["localhost", "10.0.0.1"], **SETTINGS)
    with Sandbox(settings) as sb:
        out = sb.call(tool("value = 1", network=True), {}, workdir=workdir, network=True)
    assert not out.ok and out.kind is ErrorKind.SANDBOX, out
    assert "allow-list" in out.message and "\n" not in out.message


def test_missing_helper_fails_the_call_with_one_line(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, host_server: int
) -> None:
    require_bwrap()
    real_which = netns._which
    monkeypatch.setattr(
        netns, "_which", lambda name: None if name == "slirp4netns" else real_which(name)
    )
    with Sandbox(SandboxSettings(backend="bwrap", **SETTINGS)) as sb:
        out = sb.call(tool("value = 1", network=True), {}, workdir=workdir, network=True)
        undeclared = sb.call(tool("value = 1"), {}, workdir=workdir)
    assert not out.ok and out.kind is ErrorKind.SANDBOX, out
    assert "slirp4netns" in out.message and "\n" not in out.message
    assert undeclared.ok, undeclared
    # The old, shared behaviour only when asked for explicitly.
    shared = SandboxSettings(backend="bwrap", shared_host_network=True, **SETTINGS)
    with Sandbox(shared) as sb:
        value = reach(sb, workdir, [("tcp", "127.0.0.1", host_server)])
    assert value[f"127.0.0.1:{host_server}"] == "hello from the host"


def test_network_workers_start_reliably(
    net_sandbox: Sandbox, workdir: Path, public_hosts: tuple[FakeHost, FakeHost]
) -> None:
    # Routes written while bwrap still configures the namespace's loopback made
    # about one start in six fail ("loopback: Failed RTM_NEWADDR").
    public, _ = public_hosts
    for _ in range(12):
        value = reach(net_sandbox, workdir, [("http", public.address, public.port)], warm=False)
        assert value == {f"{public.address}:{public.port}": "hello from public"}


def _helpers_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        if name == netns.HELPER and parent == pid:
            found.append(int(entry))
    return found


def test_the_helper_ends_with_its_worker(
    workdir: Path, public_hosts: tuple[FakeHost, FakeHost]
) -> None:
    public, _ = public_hosts
    before = set(_helpers_of(os.getpid()))
    with Sandbox(SandboxSettings(backend="bwrap", **SETTINGS)) as sb:
        assert reach(sb, workdir, [("http", public.address, public.port)])
        assert reach(sb, workdir, [("http", public.address, public.port)], warm=False)
        assert len(set(_helpers_of(os.getpid())) - before) >= 1
    deadline = time.monotonic() + 5
    while set(_helpers_of(os.getpid())) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not set(_helpers_of(os.getpid())) - before


def test_a_killed_worker_takes_its_helper_along(
    workdir: Path, public_hosts: tuple[FakeHost, FakeHost]
) -> None:
    public, _ = public_hosts
    with Sandbox(SandboxSettings(backend="bwrap", **SETTINGS)) as sb:
        before = set(_helpers_of(os.getpid()))
        # A tool that kills every process of its uid takes the worker down with it.
        body = "os.kill(-1, 9)\nvalue = None"
        out = sb.call(tool(body, network=True), {}, workdir=workdir, network=True)
        assert not out.ok
        assert reach(sb, workdir, [("http", public.address, public.port)])
        deadline = time.monotonic() + 5
        while len(set(_helpers_of(os.getpid())) - before) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(set(_helpers_of(os.getpid())) - before) <= 1


def test_blocked_destinations_cover_the_brief() -> None:
    import ipaddress

    for text in (
        "10.1.2.3",
        "172.20.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.100.1.1",
        "127.0.0.1",
    ):
        assert netns.is_blocked(ipaddress.IPv4Address(text), [])
    for text in ("203.0.113.7", "198.51.100.7", "192.0.2.7", "8.8.8.8"):
        assert not netns.is_blocked(ipaddress.IPv4Address(text), [])
    trie = (
        "Local:\n  |-- 192.0.2.2\n     /32 host LOCAL\n  |-- 192.0.2.255\n     /32 link BROADCAST\n"
    )
    assert netns.host_local_networks(trie) == [ipaddress.IPv4Network("192.0.2.2/32")]
