"""Which hosts jobs may call: teachers, evaluation targets, judges and the /metrics they scrape.

The operator's allow-list (SLMOPS_EGRESS_ALLOW, default `*`) holds host names,
`*.domain` wildcards, IP addresses and CIDR networks; `*` is any host. Link-local
addresses (169.254.0.0/16, fe80::/10) and the cloud metadata services
(fd00:ec2::254, 100.100.100.200, 192.0.0.192, metadata.google.internal, ...) are
refused whatever the list says, unless an IP or CIDR entry of it names them
(a metadata host name must also be listed by its exact name).

A URL is checked twice. At Create, by the host it names (`url_problem`): a name
or an IP literal against the list. In the job, whenever a connection is opened
(`http_client`, `async_http_client`): the host is resolved, every address it
resolves to must be allowed, and the connection goes to an address that was
checked, so a name pointing at 169.254.169.254 is refused too, and so is a
redirect to one. Those clients take no proxy from the environment.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpcore
import httpx

from slmops.core import settings
from slmops.core.errors import Unavailable

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
BLOCKED_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "100.100.100.200/32", "192.0.0.192/32")
)
BLOCKED_NAMES = frozenset({
    "metadata", "metadata.google.internal", "metadata.goog", "metadata.azure.com", "metadata.azure.internal",
    "instance-data", "instance-data.ec2.internal", "metadata.tencentyun.com", "metadata.oraclecloud.com",
})  # fmt: skip
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_FORMS = re.compile(r"[0-9a-fx.]+", re.IGNORECASE)


class EgressRefused(Unavailable):
    """A job was about to call a host the egress allow-list does not allow."""


def _env() -> str:
    return settings.VARS["egress_allow"].env


def split_hosts(text: str) -> list[str]:
    """Comma-separated host entries, lowercased, without a trailing dot."""
    return [h.strip().lower().rstrip(".") for h in text.split(",") if h.strip()]


def host_of(url: str) -> str:
    """The host a URL names, lowercased, without brackets or a trailing dot; "" when it names none."""
    try:
        return (urlsplit(url).hostname or "").rstrip(".")
    except ValueError:
        return ""


def parse_ip(host: str) -> IP | None:
    """host as an IP address; None for a name."""
    text = host.strip("[]").split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        if not _IPV4_FORMS.fullmatch(text):
            return None
        try:  # what the resolver reads as IPv4 too: 2852039166, 0xa9.0xfe.0xa9.0xfe, 169.254.43518
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return ip


def effective(ip: IP) -> IP:
    """The address ip reaches: an IPv4-mapped or NAT64 IPv6 address as its IPv4 one."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def is_loopback(host: str) -> bool:
    """localhost, or an address in 127.0.0.0/8 or ::1."""
    ip = parse_ip(host)
    return effective(ip).is_loopback if ip is not None else host.lower().rstrip(".") == "localhost"


def _network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(entry.strip("[]"), strict=False)
    except ValueError:
        return None


def host_matches(host: str, patterns: Iterable[str]) -> bool:
    """Whether host is one of patterns: `*`, a name, `*.domain` (its subdomains), an IP or a CIDR."""
    host = host.lower().rstrip(".")
    ip = parse_ip(host)
    for pattern in patterns:
        if pattern == "*" or pattern == host:
            return True
        if pattern.startswith("*.") and ip is None and host.endswith(pattern[1:]):
            return True
        network = _network(pattern) if ip is not None else None
        if network is not None and (ip in network or effective(ip) in network):
            return True
    return False


def _explicit(ip: IP, entries: list[str]) -> bool:
    """Whether an IP or CIDR entry of the list holds ip (or the address it reaches)."""
    return any((net := _network(e)) is not None and (ip in net or effective(ip) in net) for e in entries)


def host_problem(host: str, entries: list[str] | None = None) -> str:
    """Why a job may not call host as written (a name or an IP literal); "" when it may."""
    entries = split_hosts(settings.get("egress_allow")) if entries is None else entries
    ip = parse_ip(host)
    if ip is not None:
        return address_problem(ip, host, entries, named=False)
    if host in BLOCKED_NAMES and host not in entries:
        return f"{host} is a cloud metadata service; jobs may not call it"
    if not host_matches(host, entries):
        return f"{host} is not a host jobs may call (the operator allows hosts with {_env()})"
    return ""


def address_problem(ip: IP, host: str, entries: list[str], *, named: bool = True) -> str:
    """Why a job may not connect to ip (what host resolved to); "" when it may."""
    if _explicit(ip, entries):
        return ""
    shown = host if str(ip) == host else f"{host} ({ip})"
    if any(effective(ip) in net or ip in net for net in BLOCKED_NETWORKS):
        return (f"{shown} is a link-local or cloud metadata address; jobs may not call it unless "
                f"{_env()} names its network as a CIDR")  # fmt: skip
    if "*" in entries or (named and host_matches(host, entries)):
        return ""
    return f"{shown} is not an address jobs may call (the operator allows networks with {_env()})"


def url_problem(url: str) -> str:
    """Why a job may not call url, judged by the host it names (no lookup); "" when it may."""
    host = host_of(url)
    return host_problem(host) if host else ""


def resolve(host: str, port: int) -> list[IP]:
    """Every address host resolves to, in the resolver's order; ConnectError when it resolves to none."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
    found: list[IP] = []
    for info in infos:
        ip = parse_ip(str(info[4][0]))
        if ip is not None and ip not in found:
            found.append(ip)
    if not found:
        raise httpcore.ConnectError(f"{host} resolves to no address")
    return found


def checked_addresses(host: str, port: int) -> list[IP]:
    """The addresses to connect to for host: every one it resolves to must be allowed, else EgressRefused."""
    host = host.lower().strip("[]").rstrip(".")
    entries = split_hosts(settings.get("egress_allow"))
    if problem := host_problem(host, entries):
        raise EgressRefused(problem)
    literal = parse_ip(host)
    addresses = [literal] if literal is not None else resolve(host, port)
    for ip in addresses:
        if problem := address_problem(ip, host, entries, named=literal is None):
            raise EgressRefused(problem)
    return addresses


def refusal(exc: BaseException | None) -> EgressRefused | None:
    """The EgressRefused behind exc (an HTTP client wraps it as its cause), if any."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, EgressRefused):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


class _GuardedBackend(httpcore.NetworkBackend):
    """httpcore's socket backend, connecting only to checked addresses of the host asked for."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:  # fmt: skip
        last: Exception | None = None
        for ip in checked_addresses(host, port):
            try:
                return self._inner.connect_tcp(str(ip), port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                last = exc
        raise last or httpcore.ConnectError(f"cannot connect to {host}")

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:  # fmt: skip
        raise EgressRefused("jobs call endpoints over TCP only")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _AsyncGuardedBackend(httpcore.AsyncNetworkBackend):
    """The asyncio (anyio) backend, connecting only to checked addresses; names resolve off the loop."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:  # fmt: skip
        last: Exception | None = None
        for ip in await anyio.to_thread.run_sync(checked_addresses, host, port):
            try:
                return await self._inner.connect_tcp(str(ip), port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                last = exc
        raise last or httpcore.ConnectError(f"cannot connect to {host}")

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:  # fmt: skip
        raise EgressRefused("jobs call endpoints over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


# As many connections as the openai client's own default, so a teacher's concurrency is not capped.
LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=100)


def http_client(timeout: float = 60.0) -> httpx.Client:
    """An httpx client whose connections pass the egress check; it follows no redirects."""
    transport = httpx.HTTPTransport(limits=LIMITS)
    # httpx has no parameter for httpcore's network backend: the pool is given the guarded one.
    transport._pool._network_backend = _GuardedBackend()
    return httpx.Client(transport=transport, timeout=timeout, follow_redirects=False)


def async_http_client(timeout: float = 60.0) -> httpx.AsyncClient:
    """An httpx async client whose connections pass the egress check; it follows no redirects."""
    transport = httpx.AsyncHTTPTransport(limits=LIMITS)
    transport._pool._network_backend = _AsyncGuardedBackend()
    return httpx.AsyncClient(transport=transport, timeout=timeout, follow_redirects=False)
