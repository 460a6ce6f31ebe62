"""The wall-clock deadline of one fetch (redirects included), and the DNS lookup inside it.

A watchdog thread (one per process) shuts down the socket of every fetch past its deadline, so a
server that drips one byte every few seconds cannot hold a thread forever (the per-read socket
timeout alone would never fire). The deadline of the fetch running on a thread is `_tls.deadline`
(set by safe_http.SafeOpener); connections register their socket with `track_socket`.
getaddrinfo runs in a small pool so that a stuck resolver cannot hold a thread past the deadline.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import heapq
import ipaddress
import itertools
import socket
import threading
import time

from pipeline.download.fetch_policy import FetchError

_tls = threading.local()


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
            earliest = not self._heap or entry.at < self._heap[0][0]
            heapq.heappush(self._heap, (entry.at, next(self._ids), entry))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="fetch-deadline", daemon=True)
                self._thread.start()
            if earliest:
                # Wake the watchdog only when its next wake-up must come sooner. Deadlines are now + a fixed
                # timeout, so that is rare; waking it for every fetch cost a GIL hand-off per image.
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
                    # Wakes up the blocked recv with EOF; the fetching thread then reports it. A socket the
                    # fetch closed meanwhile raises OSError: nothing left to wake.
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)


WATCHDOG = _Watchdog()


def track_socket(sock) -> None:
    entry = getattr(_tls, "deadline", None)
    if entry is not None:
        entry.sock = sock
        if entry.expired:
            raise FetchError("deadline exceeded before connecting")


# --- DNS inside the deadline --------------------------------------------------------------------
_DNS_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="dns")


def remaining_s() -> float | None:
    entry = getattr(_tls, "deadline", None)
    return None if entry is None else entry.at - time.monotonic()


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def resolve(host: str, port: int) -> list:
    """getaddrinfo bounded by the fetch's deadline (a stuck resolver cannot hold a thread past it),
    with one retry of a temporary failure (EAI_AGAIN: an overloaded resolver, common at scale)."""
    if _is_ip_literal(host):  # never asks a resolver, so it cannot hang: no hop through the pool
        return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
    for attempt in (0, 1):
        remaining = remaining_s()
        if remaining is not None and remaining <= 0:
            raise FetchError(f"deadline exceeded before the DNS lookup of {host}")
        future = _DNS_POOL.submit(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
        try:
            return future.result(timeout=remaining)
        except concurrent.futures.TimeoutError:
            raise FetchError(f"deadline exceeded during the DNS lookup of {host}") from None
        except socket.gaierror as err:
            if attempt == 0 and err.errno == socket.EAI_AGAIN:
                time.sleep(min(0.5, max(0.0, (remaining_s() or 1.0) / 2)))
                continue
            raise FetchError(f"DNS failure for {host}: {err}") from None
    raise AssertionError("unreachable")


def current_deadline() -> _Deadline | None:
    return getattr(_tls, "deadline", None)
