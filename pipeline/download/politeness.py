"""Politeness toward the hosts we download from, shared by every download thread of a process.

safe_http's opener uses these: at most `max_per_host` concurrent fetches to one host, a pause on the
whole host after a 429/503 (its Retry-After), and URL quoting so that a URL with spaces or non-ASCII
characters is fetched instead of failing with http.client's InvalidURL.
"""

from __future__ import annotations

import email.utils
import threading
import time
import urllib.parse

IMG2DATASET_CONTACT = "+https://github.com/rom1504/img2dataset"  # what img2dataset puts in its User-Agent
_URL_SAFE = "/%:@!$&'()*+,;=-._~?#[]"  # reserved and already-escaped characters stay as they are


def quote_url(url: str) -> str:
    """Percent-quote spaces and non-ASCII characters (http.client refuses them with InvalidURL);
    an already quoted URL is unchanged. A non-ASCII host becomes its IDNA form."""
    if url.isascii() and " " not in url:
        return url
    parts = urllib.parse.urlsplit(url.strip())
    netloc = parts.netloc
    if not netloc.isascii():
        host, sep, port = parts.hostname or "", ":" if parts.port else "", str(parts.port or "")
        try:
            netloc = host.encode("idna").decode("ascii") + sep + port
        except UnicodeError:
            netloc = urllib.parse.quote(netloc, safe=_URL_SAFE)
    quoted = [urllib.parse.quote(x, safe=_URL_SAFE) for x in (parts.path, parts.query, parts.fragment)]
    return urllib.parse.urlunsplit((parts.scheme, netloc, *quoted))


def retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _Hosts:
    """Per-host politeness shared by every download thread of the process: at most `cap` fetches to
    one host at once, and a pause on the whole host after it answered 429/503."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[tuple[str, int], threading.BoundedSemaphore] = {}
        self._paused_until: dict[str, float] = {}

    def slot(self, host: str, cap: int) -> threading.BoundedSemaphore:
        slot = self._slots.get((host, cap))  # dict reads are atomic; only a new host takes the lock
        if slot is None:
            with self._lock:
                slot = self._slots.setdefault((host, cap), threading.BoundedSemaphore(cap))
        return slot

    def pause(self, host: str, seconds: float) -> None:
        with self._lock:
            self._paused_until[host] = max(self._paused_until.get(host, 0.0), time.monotonic() + seconds)

    def wait_s(self, host: str) -> float:
        with self._lock:
            return max(0.0, self._paused_until.get(host, 0.0) - time.monotonic())


HOSTS = _Hosts()
