"""Network for tools that declare it: their own namespace, outbound only, no way home.

A bubblewrap worker of a network-declaring tool gets a fresh network namespace
(``--unshare-net``, like every other worker). This module connects that
namespace to the outside through ``slirp4netns``, a user-mode TCP/IP stack
running on the host: the sandbox sees one interface, ``tap0``
(``198.18.0.100/24``, gateway ``.2``, DNS forwarder ``.3``), and every
connection it opens there is re-opened by slirp4netns as an ordinary socket of
the host. Before slirp4netns is attached, unreachable routes are installed in
the sandbox's namespace for

* the host's loopback (``127/8``; slirp4netns also runs with
  ``--disable-host-loopback``, which refuses the gateway's mapping to it) and
  every address the host itself owns (services listening on ``0.0.0.0`` would
  otherwise answer on them);
* private, shared and link-local ranges: ``10/8``, ``172.16/12``,
  ``192.168/16``, ``100.64/10``, ``169.254/16`` (cloud metadata services live
  there), ``0/8``, ``192.0.0/24``, ``198.18/15`` (except the sandbox's own
  ``/24``), multicast and ``240/4``.

IPv6 is not connected at all (slirp4netns runs without ``--enable-ipv6``), so
``::1``, ``fc00::/7`` and ``fe80::/10`` are out of reach too; the price is that a
tool cannot reach an IPv6-only host. The tool cannot change the routes: it has
no capability in that namespace, and the seccomp filter refuses new namespaces.

With an allow-list (``SandboxSettings.network_allow``), the names are resolved
on the host when a worker starts; the sandbox gets host routes to exactly those
addresses, the names in its ``/etc/hosts`` and no DNS at all.

Lifetime: slirp4netns gets the read end of a pipe as ``--exit-fd``; the only
write ends live inside the sandbox (bwrap passes them to the runner), so the
helper exits by itself when the sandbox ends, however it ends (even when the
host process is killed: bwrap's ``--die-with-parent`` ends the sandbox). That
is why slirp4netns and not pasta: Debian 12's pasta has no such option, and a
helper whose end depends on the host process staying alive leaks. When
slirp4netns is missing, a network-declaring call fails with a one-line reason
instead of silently getting the host's network (unless
``SandboxSettings.shared_host_network`` asks for exactly that).

The routes are written with rtnetlink by this process, through a route socket
opened inside the sandbox's namespace: as root by a throw-away thread that
enters the namespace (no process is started); otherwise by a tiny helper
interpreter that enters the user namespace owning the network namespace, opens
the socket there and hands it back (the host user owns that user namespace, so
it holds CAP_NET_ADMIN in it). No ``ip`` or ``nsenter`` is needed. All of it
runs while the worker's Python warms up; the worker serves no request before
the set-up has finished.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import ipaddress
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from insitu.fdwait import wait_fd

HELPER = "slirp4netns"
#: The sandbox's side of the link (slirp4netns: gateway .2, DNS .3, guest .100).
GUEST_CIDR = ipaddress.IPv4Network("198.18.0.0/24")
GATEWAY = GUEST_CIDR.network_address + 2
DNS_FORWARDER = GUEST_CIDR.network_address + 3
GUEST_ADDRESS = GUEST_CIDR.network_address + 100
INTERFACE = "tap0"
#: slirp4netns's largest MTU: fewer, larger segments through the user-mode stack.
MTU = 65520

#: Destinations no network-declaring tool may reach (besides the host's own addresses).
BLOCKED_IPV4 = tuple(
    ipaddress.IPv4Network(net)
    for net in (
        "0.0.0.0/8",  # "this network"; 0.0.0.0 means the local host
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # carrier-grade NAT, also overlay networks (e.g. Tailscale)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, cloud metadata services
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments
        "192.168.0.0/16",  # private
        "198.18.0.0/15",  # benchmarking; the sandbox's own /24 stays on-link
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and the limited broadcast address
    )
)


class NetworkSetupError(Exception):
    """The sandbox's network could not be set up; the message is one line."""


def _which(name: str) -> str | None:
    # sbin is not on every PATH (a non-root shell on Debian, say); look there too.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")


def find_helper() -> tuple[str | None, str]:
    """Locate slirp4netns.

    Returns:
        (path, problem): the helper's path, or None and a one-line reason that
        says what to install and which setting restores the old behaviour.
    """
    path = _which(HELPER)
    if path is not None:
        return path, ""
    return None, (
        "this tool declares network access, but the sandbox's isolated network needs "
        f"{HELPER}, which is not installed (Debian/Ubuntu: apt-get install {HELPER}); "
        "alternatively SandboxSettings(shared_host_network=True) gives such tools the host's "
        "own network, loopback services included"
    )


def host_local_networks(fib_trie: str | None = None) -> list[ipaddress.IPv4Network]:
    """Return every IPv4 address (or local prefix) the host answers on itself.

    Read from ``/proc/net/fib_trie``: each ``host LOCAL`` entry is an address of
    an interface, or a prefix routed to the host as a whole (``ip route add
    local``).

    Args:
        fib_trie: The file's text (default: read it).
    """
    if fib_trie is None:
        try:
            fib_trie = Path("/proc/net/fib_trie").read_text(encoding="ascii", errors="replace")
        except OSError:
            return []
    found: set[ipaddress.IPv4Network] = set()
    address = None
    for line in fib_trie.splitlines():
        text = line.strip()
        if text.startswith("|--"):
            address = text[3:].strip()
        elif text.startswith("/") and "host LOCAL" in text and address:
            prefix = text.split()[0][1:]
            with contextlib.suppress(ValueError):
                found.add(ipaddress.IPv4Network(f"{address}/{prefix}", strict=False))
    return sorted(found)


def is_blocked(
    address: ipaddress.IPv4Address, host_networks: Iterable[ipaddress.IPv4Network]
) -> bool:
    """Whether ``address`` lies in a blocked range or on the host itself."""
    return any(address in net for net in (*BLOCKED_IPV4, *host_networks))


def resolve_allowed(
    hosts: Sequence[str], host_networks: Sequence[ipaddress.IPv4Network]
) -> tuple[dict[str, list[ipaddress.IPv4Address]], list[str]]:
    """Resolve an allow-list on the host.

    Args:
        hosts: Host names or IPv4 addresses.
        host_networks: The host's own addresses (never allowed).

    Returns:
        (allowed, refused): the usable IPv4 addresses of each entry, and why
        entries (or some of their addresses) were left out.
    """
    allowed: dict[str, list[ipaddress.IPv4Address]] = {}
    refused: list[str] = []
    for host in hosts:
        name = host.strip()
        if not name:
            continue
        try:
            infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
        except OSError as exc:
            refused.append(f"{name}: cannot be resolved ({exc})")
            continue
        usable = []
        for info in infos:
            address = ipaddress.IPv4Address(info[4][0])
            if is_blocked(address, host_networks):
                refused.append(f"{name}: {address} is private, local or the host's own")
            elif address not in usable:
                usable.append(address)
        if usable:
            allowed[name] = usable
    return allowed, refused


def resolv_conf(host_text: str | None, dns: bool) -> str:
    """Return the sandbox's ``/etc/resolv.conf``.

    The host's nameservers are often on loopback or a private address the
    sandbox cannot reach; slirp4netns forwards DNS sent to its own address to
    them instead. Search domains and options are kept.

    Args:
        host_text: The host's file (None: absent).
        dns: Whether DNS is available (not with an allow-list).
    """
    lines = ["# insitu sandbox: DNS goes through the network helper to the host's resolvers"]
    if dns:
        lines.append(f"nameserver {DNS_FORWARDER}")
    else:
        lines[0] = "# insitu sandbox: no DNS; the allowed hosts are in /etc/hosts"
    for line in (host_text or "").splitlines():
        word = line.split()[0] if line.split() else ""
        if word in ("search", "domain", "options"):
            lines.append(line.strip())
    return "\n".join(lines) + "\n"


def hosts_file(allowed: dict[str, list[ipaddress.IPv4Address]]) -> str:
    """Return the sandbox's ``/etc/hosts``: localhost and each allowed name."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    for name, addresses in allowed.items():
        lines.extend(f"{address}\t{name}" for address in addresses)
    return "\n".join(lines) + "\n"


def blocked_networks(host_networks: Iterable[ipaddress.IPv4Network]) -> list[ipaddress.IPv4Network]:
    """Every destination the sandbox gets an unreachable route for."""
    networks = sorted({*BLOCKED_IPV4, *host_networks})
    return [net for net in networks if not net.subnet_of(GUEST_CIDR)]


@dataclass
class NetworkPlan:
    """What one worker's network looks like, computed on the host before it starts."""

    host_networks: list[ipaddress.IPv4Network]
    allowed: dict[str, list[ipaddress.IPv4Address]] | None
    files: dict[str, str] = field(default_factory=dict)
    """Contents of ``/etc/resolv.conf`` and ``/etc/hosts`` inside the sandbox."""


def plan(allow: Sequence[str] | None) -> NetworkPlan:
    """Work out the routes and files of a network-declaring worker.

    Args:
        allow: The operator's allow-list (None: every public address).

    Raises:
        NetworkSetupError: An allow-list was given but nothing in it is usable.
    """
    host_networks = host_local_networks()
    allowed = None
    if allow is not None:
        # One host given as a plain string (an easy slip in a config file) is one host.
        hosts = [allow] if isinstance(allow, str) else list(allow)
        allowed, refused = resolve_allowed(hosts, host_networks)
        if not allowed:
            detail = "; ".join(refused) or "the list is empty"
            raise NetworkSetupError(f"no host of the network allow-list is usable: {detail}")
    try:
        host_resolv: str | None = Path("/etc/resolv.conf").read_text(errors="replace")
    except OSError:
        host_resolv = None
    files = {"/etc/resolv.conf": resolv_conf(host_resolv, dns=allowed is None)}
    if allowed is not None:
        files["/etc/hosts"] = hosts_file(allowed)
    return NetworkPlan(host_networks, allowed, files)


def prepare(allow: Sequence[str] | None, *, as_root: bool, timeout_s: float) -> NetworkAttachment:
    """Find the helper and plan one worker's network.

    Args:
        allow: The operator's allow-list (None: every public address).
        as_root: bwrap runs without a user namespace.
        timeout_s: How long the set-up may take.

    Raises:
        NetworkSetupError: slirp4netns is missing or the allow-list is unusable.
    """
    helper, problem = find_helper()
    if helper is None:
        raise NetworkSetupError(problem)
    return NetworkAttachment(helper, plan(allow), as_root=as_root, timeout_s=timeout_s)


# -- rtnetlink: the few route messages the sandbox needs ---------------------------------

_NETLINK_ROUTE = 0
_RTM_NEWROUTE = 24
_RTM_DELROUTE = 25
_NLMSG_ERROR = 2
_NLM_F_REQUEST = 0x1
_NLM_F_ACK = 0x4
_NLM_F_EXCL = 0x200
_NLM_F_CREATE = 0x400
_RT_TABLE_MAIN = 254
_RTPROT_STATIC = 4
_RT_SCOPE_UNIVERSE = 0
_RT_SCOPE_NOWHERE = 255
_RTN_UNSPEC = 0
_RTN_UNICAST = 1
_RTN_UNREACHABLE = 7
_RTA_DST = 1
_RTA_GATEWAY = 5
_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope,
#                                       type, flags
_RTATTR = struct.Struct("=HH")  # length, type
_CLONE_NEWNET = 0x40000000
_NS_GET_USERNS = 0xB701  # _IO(0xb7, 0x1) from linux/nsfs.h


def _attribute(kind: int, data: bytes) -> bytes:
    padding = -(_RTATTR.size + len(data)) % 4
    return _RTATTR.pack(_RTATTR.size + len(data), kind) + data + b"\0" * padding


def route_message(
    sequence: int,
    destination: ipaddress.IPv4Network,
    *,
    delete: bool = False,
    unreachable: bool = False,
    gateway: ipaddress.IPv4Address | None = None,
) -> bytes:
    """Encode one IPv4 route request of the main table (what ``ip route add/del`` sends).

    Args:
        sequence: The request's sequence number (echoed in its acknowledgement).
        destination: The prefix (``0.0.0.0/0``: the default route).
        delete: Delete the route instead of adding it.
        unreachable: Add an ``unreachable`` route (connections fail at once).
        gateway: Next hop of a unicast route.
    """
    if delete:
        kind, flags = _RTM_DELROUTE, _NLM_F_REQUEST | _NLM_F_ACK
        protocol, scope, route_type = 0, _RT_SCOPE_NOWHERE, _RTN_UNSPEC
    else:
        kind = _RTM_NEWROUTE
        flags = _NLM_F_REQUEST | _NLM_F_ACK | _NLM_F_CREATE | _NLM_F_EXCL
        protocol, scope = _RTPROT_STATIC, _RT_SCOPE_UNIVERSE
        route_type = _RTN_UNREACHABLE if unreachable else _RTN_UNICAST
    body = _RTMSG.pack(
        socket.AF_INET,
        destination.prefixlen,
        0,
        0,
        _RT_TABLE_MAIN,
        protocol,
        scope,
        route_type,
        0,
    )
    if destination.prefixlen:
        body += _attribute(_RTA_DST, destination.network_address.packed)
    if gateway is not None:
        body += _attribute(_RTA_GATEWAY, gateway.packed)
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags, sequence, 0) + body


def apply_routes(
    sock: socket.socket, requests: Sequence[tuple[str, bytes]], *, tolerate_exists: bool = True
) -> None:
    """Send route requests one by one and check each acknowledgement.

    Args:
        sock: A NETLINK_ROUTE socket of the target namespace.
        requests: ``(description, message)`` pairs; each message asks for an ACK
            with the sequence number of its position + 1.
        tolerate_exists: An EEXIST answer to an add counts as success.

    Raises:
        NetworkSetupError: The kernel refused a request, or did not answer.
    """
    for index, (what, message) in enumerate(requests, start=1):
        sock.sendall(message)
        while True:
            try:
                reply = sock.recv(65536)
            except TimeoutError:
                raise NetworkSetupError(f"no answer from the kernel to: {what}") from None
            _, kind, _, sequence, _ = _NLMSGHDR.unpack_from(reply)
            if kind == _NLMSG_ERROR and sequence == index:
                (code,) = struct.unpack_from("=i", reply, _NLMSGHDR.size)
                break
        if code == 0 or (tolerate_exists and -code == errno.EEXIST):
            continue
        raise NetworkSetupError(f"the kernel refused to {what}: {os.strerror(-code)}")


def route_requests(
    blocked: Iterable[ipaddress.IPv4Network],
) -> list[tuple[str, bytes]]:
    """Unreachable routes for every blocked destination."""
    requests = []
    for network in blocked:
        requests.append(
            (f"block {network}", route_message(len(requests) + 1, network, unreachable=True))
        )
    return requests


def allow_requests(addresses: Iterable[ipaddress.IPv4Address]) -> list[tuple[str, bytes]]:
    """Replace the default route with host routes to ``addresses`` through the helper."""
    default = ipaddress.IPv4Network("0.0.0.0/0")
    requests = [("remove the default route", route_message(1, default, delete=True))]
    for address in addresses:
        network = ipaddress.IPv4Network(f"{address}/32")
        requests.append(
            (f"route {address}", route_message(len(requests) + 1, network, gateway=GATEWAY))
        )
    return requests


_libc: ctypes.CDLL | None = None


def _setns(path: str, kind: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, kind) != 0:
            raise OSError(ctypes.get_errno(), f"setns({path})")
    finally:
        os.close(fd)


def _netlink_socket_as_root(pid: int) -> socket.socket:
    """Open a route socket in ``pid``'s network namespace from a throw-away thread.

    Only the entering thread changes namespace, and it ends right after: no
    other code of this process ever runs in the sandbox's namespace.
    """
    result: dict[str, Any] = {}

    def enter() -> None:
        try:
            _setns(f"/proc/{pid}/ns/net", _CLONE_NEWNET)
            result["socket"] = socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, _NETLINK_ROUTE
            )
        except OSError as exc:
            result["error"] = exc

    thread = threading.Thread(target=enter, name="insitu-sandbox-netns-enter", daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise NetworkSetupError(f"cannot enter the sandbox's network namespace: {result['error']}")
    return result["socket"]


#: Run by a fresh interpreter (single-threaded, as joining a user namespace requires):
#: enter the user namespace, then the network namespace (both given as fds), open a
#: route socket there and send it back over the Unix socket.
_ENTER_SCRIPT = """
import ctypes, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
userns, netns, channel = (int(arg) for arg in sys.argv[1:4])
for fd, flag, kind in ((userns, 0x10000000, "user"), (netns, 0x40000000, "network")):
    if libc.setns(fd, flag) != 0:
        sys.exit(f"cannot enter the sandbox's {kind} namespace: " + os.strerror(ctypes.get_errno()))
route = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
socket.send_fds(socket.socket(fileno=channel), [b"s"], [route.fileno()])
"""


class _Namespaces:
    """Fds of a sandbox's network namespace and of the user namespace that owns it.

    bwrap (without root) creates two nested user namespaces when it mounts a
    /dev: the network namespace belongs to the outer one, while the sandbox's
    processes live in the inner one. Only the owner grants the right to enter
    the network namespace, so it is found with NS_GET_USERNS rather than taken
    from ``/proc/PID/ns/user``.
    """

    def __init__(self, pid: int) -> None:
        self.net = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.user = fcntl.ioctl(self.net, _NS_GET_USERNS)
        except OSError:
            os.close(self.net)
            raise
        os.set_inheritable(self.user, False)

    def close(self) -> None:
        for fd in (self.net, self.user):
            with contextlib.suppress(OSError):
                os.close(fd)


def _netlink_socket_unprivileged(namespaces: _Namespaces, deadline: float) -> socket.socket:
    """Have a helper interpreter open a route socket in the sandbox's namespaces."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        fds = (namespaces.user, namespaces.net, theirs.fileno())
        try:
            result = subprocess.run(
                [sys.executable, "-I", "-S", "-c", _ENTER_SCRIPT, *map(str, fds)],
                pass_fds=fds,
                capture_output=True,
                text=True,
                timeout=max(0.1, deadline - time.monotonic()),
            )
        except subprocess.TimeoutExpired:
            raise NetworkSetupError("entering the sandbox's namespaces timed out") from None
        theirs.close()
        if result.returncode != 0:
            detail = " ".join(result.stderr.split())[-300:]
            raise NetworkSetupError(f"could not reach the sandbox's network namespace: {detail}")
        ours.settimeout(max(0.1, deadline - time.monotonic()))
        _, received, _, _ = socket.recv_fds(ours, 16, 1)
        if not received:
            raise NetworkSetupError("the namespace helper sent no socket")
        return socket.socket(fileno=received[0])
    finally:
        theirs.close()
        ours.close()


def _has_child(pid: int) -> bool:
    try:
        return bool(Path(f"/proc/{pid}/task/{pid}/children").read_text().strip())
    except FileNotFoundError:
        pass  # a kernel without CONFIG_PROC_CHILDREN: look for the parent pid instead
    except OSError:
        return False
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if stat[stat.rindex(")") + 2 :].split()[1] == str(pid):
                return True
    return False


def _wait_for_command(pid: int, deadline: float) -> None:
    """Wait until bwrap has finished setting its sandbox up.

    bwrap configures the loopback interface of the new namespace with rtnetlink
    itself; routes written at the same time make that fail ("loopback: Failed
    RTM_NEWADDR"). Its first process (``pid``) forks the command only after
    the whole set-up, so a child of it means the namespace is ours to change.
    """
    while True:
        if _has_child(pid):
            return
        if not os.path.exists(f"/proc/{pid}"):
            raise NetworkSetupError("the sandbox ended before its network was set up")
        if time.monotonic() > deadline:
            raise NetworkSetupError("bwrap did not finish setting up the sandbox in time")
        time.sleep(0.001)


class NetworkAttachment:
    """Connects one bwrap sandbox's fresh network namespace to the outside.

    Use: create it, pass :attr:`info_fd` to bwrap's ``--info-fd`` and
    :attr:`sandbox_fds` to the fds bwrap inherits, call :meth:`start` (it
    waits for bwrap's report in the background), start bwrap, and call
    :meth:`finish` once the worker is up (its Python starts while the network is
    being set up). The host's copies of :attr:`sandbox_fds` must be closed once
    bwrap has started.
    """

    def __init__(self, helper: str, network: NetworkPlan, *, as_root: bool, timeout_s: float):
        """Create the pipes; nothing runs yet.

        Args:
            helper: Path of slirp4netns.
            network: The routes and allow-list.
            as_root: bwrap runs without a user namespace (we are root); otherwise
                the helper joins bwrap's user namespace too.
            timeout_s: How long the whole set-up may take.
        """
        self.helper_path = helper
        self.network = network
        self.as_root = as_root
        self.timeout_s = timeout_s
        self._info_read, self._info_write = os.pipe()
        self._exit_read, self._exit_write = os.pipe()
        self._thread: threading.Thread | None = None
        self._error = ""
        self._helper: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._abandoned = False
        self._namespaces: _Namespaces | None = None
        self.sandbox_pid: int | None = None
        self.setup_ms = 0.0

    @property
    def info_fd(self) -> int:
        """The fd on which bwrap must report the sandbox's pid (``--info-fd``)."""
        return self._info_write

    @property
    def sandbox_fds(self) -> tuple[int, int]:
        """Fds bwrap must inherit: the info pipe, and the helper's exit pipe (kept inside)."""
        return (self._info_write, self._exit_write)

    def start(self) -> None:
        """Set the network up in a background thread, as soon as bwrap reports."""
        self._thread = threading.Thread(target=self._run, name="insitu-sandbox-net", daemon=True)
        self._thread.start()

    def finish(self, timeout_s: float | None = None) -> None:
        """Wait for the set-up to end.

        Raises:
            NetworkSetupError: It failed or did not end in time (the helper, if
                started, is stopped; the caller must stop the worker).
        """
        if self._thread is not None:
            self._thread.join(self.timeout_s if timeout_s is None else timeout_s)
            if self._thread.is_alive():
                self._error = self._error or "the network set-up did not finish in time"
        if self._error:
            self.abandon()
            raise NetworkSetupError(self._error)

    def abandon(self) -> None:
        """Stop the helper and close the fds this attachment still holds.

        The set-up thread, if it runs, closes its own fds when it ends (with a
        deadline), so closing them under its feet is never needed.
        """
        with self._lock:
            self._abandoned = True
            helper = self._helper
        if helper is not None and helper.poll() is None:
            with contextlib.suppress(OSError):
                helper.kill()
        if self._thread is None:
            self._close_read_ends()

    def _close_read_ends(self) -> None:
        for name in ("_info_read", "_exit_read"):
            fd = getattr(self, name)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, name, -1)

    # -- the set-up thread --------------------------------------------------------

    def _run(self) -> None:
        started = time.monotonic()
        deadline = started + self.timeout_s
        try:
            pid = self.sandbox_pid = self._read_sandbox_pid(deadline)
            _wait_for_command(pid, deadline)
            if self.as_root:
                route_socket = _netlink_socket_as_root(pid)
            else:
                namespaces = self._namespaces = _Namespaces(pid)
                route_socket = _netlink_socket_unprivileged(namespaces, deadline)
            with route_socket:
                route_socket.settimeout(max(0.1, deadline - time.monotonic()))
                # Routes first: by the time the helper connects anything, the blocked
                # destinations are already unreachable.
                apply_routes(
                    route_socket, route_requests(blocked_networks(self.network.host_networks))
                )
                self._start_helper(pid, deadline)
                if self.network.allowed is not None:
                    addresses = [a for values in self.network.allowed.values() for a in values]
                    apply_routes(route_socket, allow_requests(addresses), tolerate_exists=False)
        except NetworkSetupError as exc:
            self._error = str(exc)
        except Exception as exc:  # a bug or an environment failure: still one line
            self._error = f"network set-up failed: {type(exc).__name__}: {exc}"
        finally:
            self._close_read_ends()
            if self._namespaces is not None:
                self._namespaces.close()
            self.setup_ms = (time.monotonic() - started) * 1000.0
            if self._error:
                self.abandon()

    def _read_sandbox_pid(self, deadline: float) -> int:
        data = b""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NetworkSetupError("bwrap did not report its sandbox's pid in time")
            if not wait_fd(self._info_read, timeout_s=remaining):
                continue
            chunk = os.read(self._info_read, 4096)
            data += chunk
            if not chunk or data.rstrip().endswith(b"}"):
                break
        try:
            pid = int(json.loads(data)["child-pid"])
        except (ValueError, KeyError, TypeError):
            raise NetworkSetupError(
                f"the sandbox ended before its network was set up (bwrap reported {data[:200]!r})"
            ) from None
        return pid

    def _start_helper(self, pid: int, deadline: float) -> None:
        ready_read, ready_write = os.pipe()
        command = [
            self.helper_path,
            "--configure",
            f"--mtu={MTU}",
            f"--cidr={GUEST_CIDR}",
            "--disable-host-loopback",
            "--enable-seccomp",
            f"--exit-fd={self._exit_read}",
            f"--ready-fd={ready_write}",
        ]
        if self.as_root:
            # Its own mount namespace and no capabilities but NET_BIND_SERVICE. (Without
            # root it runs with none anyway, and 1.2.0 cannot enter bwrap's user
            # namespace for this: setegid(0) fails there.)
            command.append("--enable-sandbox")
        if self.network.allowed is not None:
            command.append("--disable-dns")
        inherited = [self._exit_read, ready_write]
        if self._namespaces is not None:
            # The owner of the network namespace (see _Namespaces), by our fd of it.
            command.append(f"--userns-path=/proc/self/fd/{self._namespaces.user}")
            inherited.append(self._namespaces.user)
        command += [str(pid), INTERFACE]
        errors = tempfile.TemporaryFile()  # noqa: SIM115 - read below, closed in finally
        try:
            try:
                helper = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=errors,
                    pass_fds=tuple(inherited),
                    close_fds=True,
                    start_new_session=True,
                )
            except OSError as exc:
                raise NetworkSetupError(f"cannot start {HELPER}: {exc}") from None
            finally:
                os.close(ready_write)
                self._close_read_ends()
            # Nobody else waits for it: reap it when it exits with its sandbox.
            threading.Thread(
                target=helper.wait, name="insitu-sandbox-net-reaper", daemon=True
            ).start()
            with self._lock:
                self._helper = helper
                abandoned = self._abandoned
            if abandoned:
                helper.kill()
                raise NetworkSetupError("the network set-up was abandoned")
            if not self._wait_ready(helper, ready_read, deadline):
                helper.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    helper.wait(5)
                errors.seek(0)
                detail = " ".join(errors.read().decode("utf-8", "replace").split())[-300:]
                raise NetworkSetupError(
                    f"{HELPER} did not connect the sandbox (exit {helper.returncode}): "
                    f"{detail or 'no message'}"
                )
        finally:
            os.close(ready_read)
            errors.close()

    @staticmethod
    def _wait_ready(helper: subprocess.Popen[bytes], ready_read: int, deadline: float) -> bool:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if wait_fd(ready_read, timeout_s=min(remaining, 0.05)):
                return os.read(ready_read, 16) == b"1"
            if helper.poll() is not None:
                return False
