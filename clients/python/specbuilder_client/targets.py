"""Where a ``Client`` connects: one server, or several replicas that gRPC balances round-robin.

One address (``host:port``) or any gRPC target URI (``dns:///name:port``, ``ipv4:a,b``,
``unix:path``) goes to gRPC as it is, with gRPC's default policy (``pick_first``: one
connection) unless a policy is named. Several addresses — a list, or one string with commas
— must be IP addresses of one family; they become one ``ipv4:``/``ipv6:`` target, which
gRPC's own resolver reads, and gRPC's ``round_robin`` policy keeps a connection to each and
sends each call to the next replica that is up. The balancing is all gRPC's: a policy named
in the channel's service config, nothing re-implemented here.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass

POLICIES = ("round_robin", "pick_first")
"""The load-balancing policies gRPC ships that a client may name."""
SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:")
"""Prefixes of targets gRPC resolves itself; such a target is passed on unchanged, commas and all."""


@dataclass(frozen=True)
class ChannelTarget:
    """What ``grpc.insecure_channel``/``secure_channel`` get: the target and channel options."""

    target: str
    options: tuple[tuple[str, str], ...]


def _split(address: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """``ip:port`` or ``[ipv6]:port`` as the address and port; ``ValueError`` saying what is wrong."""
    host, colon, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"{address!r}: several addresses must be IP addresses with ports (127.0.0.1:50051, [::1]:50051); "
            "for a name with several addresses use one target, dns:///NAME:PORT, with load_balancing='round_robin'"
        ) from None
    if not colon or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r}: needs a port from 1 to 65535 after the address (127.0.0.1:50051)")
    return ip, int(port)


def _addresses(target: str | Sequence[str]) -> list[str]:
    parts = target.split(",") if isinstance(target, str) else list(target)
    addresses = [part.strip() for part in parts if isinstance(part, str)]
    if not addresses or len(addresses) != len(parts) or not all(addresses):
        raise ValueError(f"server addresses must be non-empty host:port strings; got {target!r}")
    return addresses


def _several(addresses: list[str]) -> str:
    """One ``ipv4:``/``ipv6:`` target listing every address."""
    parsed = [_split(address) for address in addresses]
    families = {ip.version for ip, _ in parsed}
    if len(families) > 1:
        raise ValueError(f"several addresses must all be IPv4 or all IPv6 (one gRPC target); got {', '.join(addresses)}")
    if families == {4}:
        return "ipv4:" + ",".join(f"{ip}:{port}" for ip, port in parsed)
    return "ipv6:" + ",".join(f"[{ip}]:{port}" for ip, port in parsed)


def channel_target(target: str | Sequence[str], load_balancing: str | None = None, authority: str | None = None) -> ChannelTarget:
    """The gRPC target and options for ``target`` (see the module docstring).

    ``load_balancing`` names the policy (default: ``round_robin`` for several addresses, gRPC's
    own default otherwise). ``authority`` is the name TLS checks the servers' certificates
    against; for several addresses it defaults to the first one, so one certificate valid for
    it (or for a name given here) serves every replica.
    """
    if load_balancing is not None and load_balancing not in POLICIES:
        raise ValueError(f"load_balancing must be one of {', '.join(POLICIES)}; got {load_balancing!r}")
    if isinstance(target, str) and target.startswith(SCHEMES):
        uri, several = target, False
    else:
        addresses = _addresses(target)
        several = len(addresses) > 1
        uri = _several(addresses) if several else addresses[0]
        if several and authority is None:
            authority = addresses[0]
    policy = load_balancing or ("round_robin" if several else None)
    options: list[tuple[str, str]] = []
    if policy is not None:
        options.append(("grpc.service_config", json.dumps({"loadBalancingConfig": [{policy: {}}]})))
    if authority is not None:
        options.append(("grpc.default_authority", authority))
    return ChannelTarget(uri, tuple(options))


__all__ = ["POLICIES", "ChannelTarget", "channel_target"]
