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

Modules: fetch_policy.py (the policy, the address rule, the errors), fetch_deadline.py (the deadline
watchdog and DNS inside it), checked_connection.py (connections that check the address they dial),
this one (the handlers, the body reader, the opener and its installation).

Errors raised here are not OSError (urllib would wrap them into '<urlopen error ...>'); their str()
starts with a machine-readable reason, e.g. "blocked_address: ...", "too_large: ...",
"download_error: deadline ...", which shard_downloader maps onto schemas.IMAGE_REASONS.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import urllib.response
from collections.abc import Iterator

from pipeline.download.checked_connection import SafeHTTPConnection, SafeHTTPSConnection
from pipeline.download.fetch_deadline import WATCHDOG, _tls, remaining_s
from pipeline.download.fetch_policy import (
    ALLOWED_SCHEMES,
    BlockedAddress,
    FetchError,
    FetchPolicy,
    RobotsDisallowed,
    TooLarge,
    current_policy,
    non_public_reason,
    set_policy,
)
from pipeline.download.img2dataset_parts import is_disallowed  # the X-Robots-Tag parser img2dataset applies
from pipeline.download.politeness import HOSTS as _HOSTS
from pipeline.download.politeness import IMG2DATASET_CONTACT as _IMG2DATASET_CONTACT
from pipeline.download.politeness import quote_url, retry_after_s

__all__ = [
    "ALLOWED_SCHEMES",
    "BlockedAddress",
    "FetchError",
    "FetchPolicy",
    "RobotsDisallowed",
    "SafeOpener",
    "TooLarge",
    "build_safe_opener",
    "current_policy",
    "install",
    "installed",
    "non_public_reason",
    "quote_url",
    "retry_after_s",
]
_READ_CHUNK = 1 << 16


@contextlib.contextmanager
def installed(policy: FetchPolicy) -> Iterator[None]:
    """Install the safe opener with `policy` for the duration of the block, then put back whatever
    opener and policy the process had (other urllib users in the process are left as found).

    Process-wide: run one such block at a time per process (one Ray task per worker process).
    """
    previous_policy, previous_opener = current_policy(), getattr(urllib.request, "_opener", None)
    install(policy)
    try:
        yield
    finally:
        set_policy(previous_policy)
        urllib.request.install_opener(previous_opener)


def install(policy: FetchPolicy) -> FetchPolicy:
    """Make `policy` the process-wide one and install the safe opener; returns the previous policy.

    Set it before starting download threads (one Ray task per worker process at a time).
    """
    previous = set_policy(policy)
    if not isinstance(getattr(urllib.request, "_opener", None), SafeOpener):
        urllib.request.install_opener(build_safe_opener())
    return previous


class _SafeHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(SafeHTTPConnection, req)


class _SafeHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(SafeHTTPSConnection, req, context=self._context)


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
        policy = current_policy()
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
        data = bytes(body)
        if policy.inspect_body is not None:
            policy.inspect_body(data)
        result = urllib.response.addinfourl(io.BytesIO(data), response.headers, response.url, response.status)
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
        policy = current_policy()
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
            _tls.deadline = WATCHDOG.start(policy.total_timeout)
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
                WATCHDOG.finish(_tls.deadline)
                _tls.deadline = None
        raise AssertionError("unreachable")

    @staticmethod
    def _wait_for_host(host: str, policy: FetchPolicy) -> None:
        wait = _HOSTS.wait_s(host)
        if wait <= 0:
            return
        if wait >= (remaining_s() or 0.0):
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
                raise FetchError(f"deadline of {current_policy().total_timeout:g}s exceeded ({err})") from None
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
