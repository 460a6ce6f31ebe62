"""A local, threaded HTTP server for the demo images and the hostile endpoints tests need.

`python -m http.server` serves one request at a time and drops connections under 32 parallel
downloaders, so this is a ThreadingHTTPServer with a deep accept queue, keep-alive (HTTP/1.1) and
files cached in memory. It only ever binds 127.0.0.1.

Routes (PATH is a file under --root):
    /PATH                      the file (Content-Type from its extension)
    /noai/PATH                 the file with "X-Robots-Tag: noai"
    /redirect/PATH             302 to /PATH
    /redirect-to?url=URL       302 to any URL (security tests: loopback, 169.254.169.254, file://)
    /huge/N                    N bytes with Content-Length
    /huge-chunked/N            N bytes, chunked, no Content-Length
    /drip/SECONDS              Content-Length 1000, then one byte every 0.1 s for at most SECONDS
    /drip-headers/SECONDS      the status line, then a header one byte every 0.1 s for at most SECONDS
    /status/CODE               an empty response with that status
    /busy/N/PATH               429 with "Retry-After: 1" for the first N requests of PATH, then the file
    /slow/SECONDS/PATH         the file after SECONDS (at most 10); `peak_slow` counts the most at once
    anything else              404

    python orchestration/demo_server.py --root DIR --port 0 --port-file F    # foreground; Ctrl-C/SIGTERM stops
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
import signal
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from common import storage

HOST = "127.0.0.1"
_MAX_SYNTHETIC_BYTES = 1 << 30  # /huge is bounded too
_MAX_DRIP_SECONDS = 120.0


class DemoServer(ThreadingHTTPServer):
    request_queue_size = 1024  # a burst of parallel connects must queue, not be refused
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, root: str, port: int = 0):
        self.root = os.path.realpath(root)
        self._cache: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.busy_seen: dict[str, int] = {}  # /busy: requests answered 429 so far, per path
        self.slow_now = self.peak_slow = 0  # /slow: requests in progress, and the most at once
        super().__init__((HOST, port), _Handler)

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}"

    def read_file(self, rel: str) -> bytes | None:
        """The bytes of ROOT/rel, cached; None when missing or outside the root."""
        data = self._cache.get(rel)
        if data is not None:
            return data
        path = os.path.realpath(os.path.join(self.root, rel))
        if not path.startswith(self.root + os.sep) or not os.path.isfile(path):
            return None
        with open(path, "rb") as f:
            data = f.read()
        self._cache[rel] = data
        return data

    def handle_error(self, request, client_address):
        pass  # clients abort on purpose (too_large, deadlines): a reset connection is not news


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: DemoServer

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass

    def do_GET(self):  # noqa: N802 - stdlib name
        parsed = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(parsed.path).lstrip("/")
        head, _, rest = path.partition("/")
        try:
            if head == "noai":
                return self._file(rest, {"X-Robots-Tag": "noai"})
            if head == "redirect":
                return self._redirect("/" + urllib.parse.quote(rest))
            if head == "redirect-to":
                target = urllib.parse.parse_qs(parsed.query).get("url", [""])[0]
                return self._redirect(target)
            if head == "huge":
                return self._huge(int(rest), chunked=False)
            if head == "huge-chunked":
                return self._huge(int(rest), chunked=True)
            if head == "drip":
                return self._drip(float(rest))
            if head == "drip-headers":
                return self._drip(float(rest), headers_too=True)
            if head == "status":
                return self._empty(int(rest))
            if head == "busy":
                return self._busy(*rest.split("/", 1))
            if head == "slow":
                return self._slow(*rest.split("/", 1))
            return self._file(path, {})
        except ValueError:
            return self._empty(400)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _empty(self, code: int, headers: dict[str, str] | None = None):
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _file(self, rel: str, headers: dict[str, str]):
        data = self.server.read_file(rel)
        if data is None:
            return self._empty(404)
        self.send_response(200)
        self.send_header("Content-Type", mimetypes.guess_type(rel)[0] or "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _busy(self, n: str, rel: str):
        with self.server.lock:
            seen = self.server.busy_seen.get(rel, 0)
            if seen < int(n):
                self.server.busy_seen[rel] = seen + 1
        if seen < int(n):
            return self._empty(429, {"Retry-After": "1"})
        return self._file(rel, {})

    def _slow(self, seconds: str, rel: str):
        with self.server.lock:
            self.server.slow_now += 1
            self.server.peak_slow = max(self.server.peak_slow, self.server.slow_now)
        try:
            time.sleep(min(float(seconds), 10.0))
        finally:  # counted while it waits, before the body goes out (the client's slot ends after it)
            with self.server.lock:
                self.server.slow_now -= 1
        return self._file(rel, {})

    def _redirect(self, location: str):
        self._empty(302, {"Location": location})

    def _huge(self, n: int, chunked: bool):
        n = min(max(n, 0), _MAX_SYNTHETIC_BYTES)
        block = b"\0" * (1 << 16)
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Transfer-Encoding" if chunked else "Content-Length", "chunked" if chunked else str(n))
        self.end_headers()
        sent = 0
        while sent < n:
            piece = block[: min(len(block), n - sent)]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            sent += len(piece)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _drip(self, seconds: float, headers_too: bool = False):
        end = time.monotonic() + min(seconds, _MAX_DRIP_SECONDS)
        if headers_too:
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        else:
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", "1000")
            self.end_headers()
        for _ in range(1000):  # bounded: at most 1000 bytes, at most `seconds`
            if time.monotonic() >= end:
                break
            self.wfile.write(b"a" if headers_too else b"\0")
            self.wfile.flush()
            time.sleep(0.1)
        self.close_connection = True


@contextlib.contextmanager
def serve(root: str, port: int = 0) -> Iterator[str]:
    """Serve `root` on 127.0.0.1 in a background thread; yields the base URL."""
    server = DemoServer(root, port)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield server.base_url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def serve_until_stopped(root: str, port: int = 0, port_file: str = "") -> None:
    """Serve `root` on 127.0.0.1:`port` in the foreground until Ctrl-C or SIGTERM. The bound port is
    written atomically to `port_file` once listening (scripts wait for that file)."""
    server = DemoServer(root, port)
    if port_file:
        storage.write_bytes_atomic(port_file, str(server.server_address[1]).encode())
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    print(f"serving {server.root} at {server.base_url}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
