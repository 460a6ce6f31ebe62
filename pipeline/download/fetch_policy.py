"""What a fetch of an untrusted URL may do: the FetchPolicy, the address rule, and the refusals.

The address rule (`non_public_reason`): loopback, private, link-local (169.254.169.254 included),
multicast, reserved, unspecified and their IPv6 forms are refused, IPv4-mapped, NAT64, 6to4 and
Teredo IPv6 forms judged by the IPv4 address they carry. `allow_private_networks` lifts the rule;
`allowed_networks` exempts given networks (tests allow 127.0.0.1 only).

Errors are not OSError (urllib would wrap them into '<urlopen error ...>'); their str() starts with
a machine-readable reason ("blocked_address: ...", "too_large: ...", "download_error: ..."), which
shard_downloader maps onto schemas.IMAGE_REASONS. One policy is in force per process
(`current_policy`), set by safe_http.install.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable

ALLOWED_SCHEMES = ("http", "https")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclasses.dataclass(frozen=True)
class FetchPolicy:
    allow_private_networks: bool = False
    allowed_networks: tuple[str, ...] = ()  # exempt networks even when private ("127.0.0.1/32")
    max_bytes: int = 20_000_000
    total_timeout: float = 30.0
    # X-Robots-Tag directives that refuse the image, checked on the headers before the body is read
    # (img2dataset checks them too, but only after it has read the whole body).
    disallowed_header_directives: tuple[str, ...] = ()
    user_agent_token: str | None = None
    contact_url: str = ""  # replaces img2dataset's project URL in the User-Agent ('' keeps it)
    max_per_host: int = 0  # concurrent fetches to one host per process (0 = no cap)
    busy_retries: int = 2  # extra tries after a 429/503, each after the host's Retry-After
    # Called with every 2xx body on the fetching thread, before it is returned; shard_downloader checks
    # image headers there, off img2dataset's single consumer thread (see HeaderGate.precheck).
    inspect_body: Callable[[bytes], None] | None = dataclasses.field(default=None, compare=False)

    @classmethod
    def from_download_config(cls, cfg) -> FetchPolicy:
        return cls(
            allow_private_networks=cfg.allow_private_networks,
            max_bytes=cfg.max_bytes,
            total_timeout=cfg.total_timeout,
            disallowed_header_directives=tuple(d.strip().lower() for d in cfg.disallowed_header_directives),
            user_agent_token=cfg.user_agent_token.strip().lower() or None,
            contact_url=cfg.contact_url.strip(),
            max_per_host=cfg.max_per_host,
            busy_retries=cfg.busy_retries,
        )

    def address_refusal(self, ip: str) -> str | None:
        """Why connecting to `ip` is refused, or None when it is allowed."""
        if self.allow_private_networks:
            return None
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
        if any(addr in ipaddress.ip_network(n) for n in self.allowed_networks if _same_version(addr, n)):
            return None
        return non_public_reason(addr)


def _same_version(addr, network: str) -> bool:
    return ipaddress.ip_network(network).version == addr.version


def non_public_reason(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """'loopback', 'private', ... for a non-public address, None for a public one."""
    if addr.version == 6:
        # An IPv6 form that carries an IPv4 address reaches that IPv4 address: judge the embedded one.
        # 6to4 (2002::/16) routes to its embedded IPv4 through a relay; Teredo (2001::/32) carries
        # the client's IPv4 (obfuscated; the ipaddress module undoes that).
        if addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        elif addr in _NAT64:
            addr = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        elif addr.sixtofour is not None:
            addr = addr.sixtofour
        elif addr.teredo is not None:
            embedded = non_public_reason(addr.teredo[1])
            if embedded is not None:
                return embedded
    for name in ("loopback", "unspecified", "link_local", "multicast", "reserved", "private", "site_local"):
        if getattr(addr, f"is_{name}", False):
            return name
    if not addr.is_global:  # e.g. 100.64.0.0/10 (carrier-grade NAT)
        return "not_global"
    return None


# --- errors ------------------------------------------------------------------------------------
class FetchError(Exception):
    """Base of our refusals. Deliberately not an OSError: urllib would re-wrap it."""

    reason = "download_error"

    def __init__(self, detail: str):
        self.detail = detail
        super().__init__(f"{self.reason}: {detail}")


class BlockedAddress(FetchError):
    reason = "blocked_address"


class TooLarge(FetchError):
    reason = "too_large"


class RobotsDisallowed(FetchError):
    reason = "robots_disallowed"


# --- the policy in force (one per process: safe_http.install sets it) ---------------------------
_policy = FetchPolicy()


def current_policy() -> FetchPolicy:
    return _policy


def set_policy(policy: FetchPolicy) -> FetchPolicy:
    """Make `policy` the process-wide one; returns the previous one."""
    global _policy
    previous, _policy = _policy, policy
    return previous
