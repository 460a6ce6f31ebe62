"""A hardened, process-wide urllib opener for fetching untrusted URLs.

img2dataset downloads with `urllib.request.urlopen`, i.e. through the process-global opener. While
a shard downloads (`with installed(policy):`) we replace that opener with one built from only the
handlers we need, so that img2dataset keeps doing the download while every request obeys a
`FetchPolicy`:

1. Only http and https, also after redirects. There is no file/ftp/data handler at all, and no
   ProxyHandler either: a proxy from the environment would connect on our behalf and bypass rule 2.
2. Hosts are resolved by us and every resolved address is checked *at connect time*; we connect to
   the very address we checked. A DNS answer that changes between a check and the connect (DNS
   rebinding) therefore cannot slip through, and each redirect hop is checked the same way.
   Refused: loopback, private, link-local (169.254.169.254 included), multicast, reserved,
   unspecified and their IPv6 forms, IPv4-mapped/NAT64/6to4/Teredo IPv6 included. `allow_private_networks`
   lifts the rule; `allowed_networks` exempts given networks (tests allow 127.0.0.1 only).
3. The body is capped: Content-Length above `max_bytes` is refused before reading, and bodies
   without a length are read in chunks and abandoned as soon as they pass the cap.
4. A wall-clock deadline per fetch (redirects included): a watchdog thread shuts the socket down
   when it passes, so a server that drips one byte every few seconds cannot hold a thread forever
   (the per-read socket timeout alone would never fire).

Errors raised here are not OSError (urllib would wrap them into '<urlopen error ...>'); their str()
starts with a machine-readable reason, e.g. "blocked_address: ...", "too_large: ...",
"download_error: deadline ...", which shard_downloader maps onto schemas.IMAGE_REASONS.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import heapq
import http.client
import io
import ipaddress
import itertools
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import urllib.response
from collections.abc import Iterator

from img2dataset.downloader import is_disallowed  # the same X-Robots-Tag parser img2dataset applies

from pipeline.download.politeness import HOSTS as _HOSTS
from pipeline.download.politeness import IMG2DATASET_CONTACT as _IMG2DATASET_CONTACT
from pipeline.download.politeness import quote_url, retry_after_s

ALLOWED_SCHEMES = ("http", "https")
_READ_CHUNK = 1 << 16
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


# --- the policy in force -----------------------------------------------------------------------
_policy = FetchPolicy()
_tls = threading.local()


def current_policy() -> FetchPolicy:
    return _policy


@contextlib.contextmanager
def installed(policy: FetchPolicy) -> Iterator[None]:
    """Install the safe opener with `policy` for the duration of the block, then put back whatever
    opener and policy the process had (other urllib users in the process are left as found).

    Process-wide: run one such block at a time per process (one Ray task per worker process).
    """
    global _policy
    previous_policy, previous_opener = _policy, getattr(urllib.request, "_opener", None)
    install(policy)
    try:
        yield
    finally:
        _policy = previous_policy
        urllib.request.install_opener(previous_opener)


def install(policy: FetchPolicy) -> FetchPolicy:
    """Make `policy` the process-wide one and install the safe opener; returns the previous policy.

    Set it before starting download threads (one Ray task per worker process at a time).
    """
    global _policy
    previous, _policy = _policy, policy
    if not isinstance(getattr(urllib.request, "_opener", None), SafeOpener):
        urllib.request.install_opener(build_safe_opener())
    return previous


# --- deadline watchdog ------------------------------------------------------------------------
class _Deadline:
    __slots__ = ("at", "sock", "expired", "done")

    def __init__(self, at: float):
        self.at, self.sock, self.expired, self.done = at, None, False, False


class _Watchdog:
    """One thread for the whole process: shuts down the socket of every fetch past its deadline."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Deadline]] = []
        self._cv = threading.Condition()
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def start(self, seconds: float) -> _Deadline:
        entry = _Deadline(time.monotonic() + seconds)
        with self._cv:
            heapq.heappush(self._heap, (entry.at, next(self._ids), entry))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="fetch-deadline", daemon=True)
                self._thread.start()
            self._cv.notify()
        return entry

    @staticmethod
    def finish(entry: _Deadline) -> None:
        entry.done = True  # lazily dropped from the heap when its time comes
        entry.sock = None

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._heap:
                    self._cv.wait()
                at, _, entry = self._heap[0]
                now = time.monotonic()
                if at > now:
                    self._cv.wait(at - now)
                    continue
                heapq.heappop(self._heap)
            if not entry.done:
                entry.expired = True
                sock = entry.sock
                if sock is not None:
                    try:  # wakes up the blocked recv with EOF; the fetching thread then reports it
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass


_WATCHDOG = _Watchdog()


def _track_socket(sock) -> None:
    entry = getattr(_tls, "deadline", None)
    if entry is not None:
        entry.sock = sock
        if entry.expired:
            raise FetchError("deadline exceeded before connecting")


# --- DNS inside the deadline --------------------------------------------------------------------
_DNS_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="dns")


def _remaining() -> float | None:
    entry = getattr(_tls, "deadline", None)
    return None if entry is None else entry.at - time.monotonic()


def _resolve(host: str, port: int) -> list:
    """getaddrinfo bounded by the fetch's deadline (a stuck resolver cannot hold a thread past it),
    with one retry of a temporary failure (EAI_AGAIN: an overloaded resolver, common at scale)."""
    for attempt in (0, 1):
        remaining = _remaining()
        if remaining is not None and remaining <= 0:
            raise FetchError(f"deadline exceeded before the DNS lookup of {host}")
        future = _DNS_POOL.submit(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
        try:
            return future.result(timeout=remaining)
        except concurrent.futures.TimeoutError:
            raise FetchError(f"deadline exceeded during the DNS lookup of {host}") from None
        except socket.gaierror as err:
            if attempt == 0 and err.errno == socket.EAI_AGAIN:
                time.sleep(min(0.5, max(0.0, (_remaining() or 1.0) / 2)))
                continue
            raise FetchError(f"DNS failure for {host}: {err}") from None
    raise AssertionError("unreachable")


# --- connections that check the address they connect to ---------------------------------------
def _checked_connection(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None):
    """socket.create_connection, but only to addresses the policy allows (checked after DNS)."""
    host, port = address
    policy = _policy
    infos = _resolve(host, port)
    allowed, refusals = [], []
    for family, type_, proto, _, sockaddr in infos:
        why = policy.address_refusal(sockaddr[0])
        if why is None:
            allowed.append((family, type_, proto, sockaddr))
        else:
            refusals.append(f"{sockaddr[0]} ({why})")
    if not allowed:
        raise BlockedAddress(f"{host} -> {', '.join(dict.fromkeys(refusals))}")
    last: OSError | None = None
    for family, type_, proto, sockaddr in allowed:
        sock = socket.socket(family, type_, proto)
        try:
            if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            _track_socket(sock)
            sock.connect(sockaddr)
            return sock
        except FetchError:
            sock.close()
            raise
        except OSError as err:
            sock.close()
            last = err
    if isinstance(last, ConnectionRefusedError):
        raise FetchError(f"connection refused by {host}:{port}")
    if isinstance(last, TimeoutError):
        raise FetchError(f"timeout connecting to {host}:{port}")
    raise FetchError(f"cannot connect to {host}:{port}: {last}")


class _SafeHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = _checked_connection


class _SafeHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = _checked_connection

    def connect(self):
        # The handshake runs on the TLS socket, which the watchdog must be able to shut down: wrap
        # without handshaking, track the wrapped socket, then handshake (inside the deadline).
        http.client.HTTPConnection.connect(self)
        if self._tunnel_host:  # never set: the opener has no proxy handler
            raise FetchError("proxy tunnels are not supported")
        tls = self._context.wrap_socket(self.sock, server_hostname=self.host, do_handshake_on_connect=False)
        self.sock = tls
        _track_socket(tls)
        try:
            tls.do_handshake()
        except (OSError, ValueError):
            entry = getattr(_tls, "deadline", None)
            if entry is not None and entry.expired:
                raise FetchError(f"deadline of {_policy.total_timeout:g}s exceeded during the TLS handshake") from None
            raise


class _SafeHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_SafeHTTPConnection, req)


class _SafeHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(_SafeHTTPSConnection, req, context=self._context)


class _SafeRedirectHandler(urllib.request.HTTPRedirectHandler):
    max_redirections = 5

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if scheme not in ALLOWED_SCHEMES:
            raise FetchError(f"redirect to unsupported scheme {scheme!r} ({newurl[:200]})")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _BodyReader(urllib.request.BaseHandler):
    """Reads a 2xx body under the byte cap and the deadline; drops every other body unread."""

    handler_order = 900  # before HTTPErrorProcessor (1000), which turns 3xx/4xx into redirects/errors

    def http_response(self, request, response):
        if not 200 <= response.status < 300:
            response.close()  # a redirect or error body is never used: do not spend bandwidth on it
            return response
        policy = _policy
        if policy.disallowed_header_directives and is_disallowed(
            response.headers, policy.user_agent_token, set(policy.disallowed_header_directives)
        ):
            response.close()
            raise RobotsDisallowed("X-Robots-Tag: " + "; ".join(response.headers.get_all("X-Robots-Tag", [])))
        cap = policy.max_bytes
        length = response.headers.get("Content-Length")
        if length is not None and length.strip().isdigit() and int(length) > cap:
            response.close()
            raise TooLarge(f"Content-Length {int(length)} > {cap} bytes")
        body = bytearray()
        entry = getattr(_tls, "deadline", None)
        try:
            while True:
                chunk = response.read(min(_READ_CHUNK, cap + 1 - len(body)))
                if not chunk:
                    break
                body += chunk
                if len(body) > cap:
                    raise TooLarge(f"> {cap} bytes (body without a usable Content-Length)")
        except (http.client.HTTPException, OSError) as err:
            if entry is not None and entry.expired:  # the watchdog cut the socket: say why
                raise FetchError(f"deadline of {policy.total_timeout:g}s exceeded while reading the body") from None
            if isinstance(err, TimeoutError):
                raise FetchError("timeout while reading the body") from None
            raise FetchError(f"body read failed after {len(body)} bytes: {type(err).__name__}: {err}") from None
        finally:
            response.close()
        if entry is not None and entry.expired:
            raise FetchError(f"deadline of {policy.total_timeout:g}s exceeded while reading the body")
        if length is not None and length.strip().isdigit() and len(body) < int(length):
            # http.client returns a short read, not an error, when the server closes early
            raise FetchError(f"incomplete body: {len(body)} of {int(length)} bytes")
        result = urllib.response.addinfourl(io.BytesIO(bytes(body)), response.headers, response.url, response.status)
        result.msg = response.msg
        return result

    https_response = http_response


BUSY_CODES = (429, 503)


class SafeOpener(urllib.request.OpenerDirector):
    """Refuses other schemes up front and runs every fetch (with its redirects) under a deadline.

    Politeness: at most `max_per_host` fetches to one host at once (waiting for a slot does not count
    against the deadline); a 429 or 503 pauses the host for its Retry-After (else 1, 2, 4 s) and the
    fetch is tried again, at most `busy_retries` times and only while the wait fits in the deadline.
    """

    def open(self, fullurl, data=None, timeout=socket._GLOBAL_DEFAULT_TIMEOUT):
        url = fullurl.full_url if isinstance(fullurl, urllib.request.Request) else str(fullurl)
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme not in ALLOWED_SCHEMES:
            raise FetchError(f"unsupported scheme {scheme!r}: only http and https are fetched")
        policy = _policy
        url = quote_url(url)
        if isinstance(fullurl, urllib.request.Request):
            fullurl.full_url = url
            agent = fullurl.get_header("User-agent")
            if agent and policy.contact_url:
                fullurl.add_header("User-Agent", agent.replace(_IMG2DATASET_CONTACT, f"+{policy.contact_url}"))
        else:
            fullurl = url
        outer = getattr(_tls, "deadline", None) is None
        if not outer:  # a redirect hop: already inside a fetch, its slot and its deadline
            return self._open_once(fullurl, data, timeout)
        host = (urllib.parse.urlsplit(url).hostname or "").lower()
        slot = _HOSTS.slot(host, policy.max_per_host) if policy.max_per_host > 0 else contextlib.nullcontext()
        with slot:
            _tls.deadline = _WATCHDOG.start(policy.total_timeout)
            try:
                for attempt in range(policy.busy_retries + 1):
                    self._wait_for_host(host, policy)
                    try:
                        return self._open_once(fullurl, data, timeout)
                    except urllib.error.HTTPError as err:
                        if err.code not in BUSY_CODES or attempt == policy.busy_retries:
                            raise
                        wait = retry_after_s(err.headers.get("Retry-After") if err.headers else None)
                        _HOSTS.pause(host, 2.0**attempt if wait is None else wait)
            finally:
                _WATCHDOG.finish(_tls.deadline)
                _tls.deadline = None
        raise AssertionError("unreachable")

    @staticmethod
    def _wait_for_host(host: str, policy: FetchPolicy) -> None:
        wait = _HOSTS.wait_s(host)
        if wait <= 0:
            return
        if wait >= (_remaining() or 0.0):
            raise FetchError(
                f"host busy: {host} asked to wait {wait:.0f}s, past the {policy.total_timeout:g}s deadline"
            )
        time.sleep(wait)

    def _open_once(self, fullurl, data, timeout):
        entry = _tls.deadline
        try:
            return super().open(fullurl, data, timeout)
        except (FetchError, urllib.error.HTTPError):
            raise
        except Exception as err:
            if entry.expired:
                raise FetchError(f"deadline of {_policy.total_timeout:g}s exceeded ({err})") from None
            raise


def build_safe_opener() -> SafeOpener:
    """An opener with only the handlers we need: http(s), redirects, errors, the body reader."""
    opener = SafeOpener()
    for handler in (
        _SafeHTTPHandler(),
        _SafeHTTPSHandler(),
        _SafeRedirectHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
        _BodyReader(),
    ):
        opener.add_handler(handler)
    return opener
