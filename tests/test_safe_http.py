"""The hardened opener on a real local server: addresses, schemes, byte cap, deadline, bombs.

Only 127.0.0.1 is ever contacted: every other address in these tests is refused before connecting.
"""

from __future__ import annotations

import io
import ipaddress
import time
import urllib.error
import urllib.request

import pytest

from pipeline.config import DownloadConfig
from pipeline.demo.server import serve
from pipeline.demo.source import plain_jpeg, png_bomb
from pipeline.download import safe_http
from pipeline.download.safe_http import BlockedAddress, FetchError, FetchPolicy, RobotsDisallowed, TooLarge

LOOPBACK_ONLY = FetchPolicy(allowed_networks=("127.0.0.1/32",), max_bytes=100_000, total_timeout=5.0)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    (root / "img.jpg").write_bytes(plain_jpeg(300, 300))
    (root / "small.bin").write_bytes(b"x" * 50_000)
    (root / "img2.jpg").write_bytes(plain_jpeg(300, 300))
    (root / "spaced name.jpg").write_bytes(plain_jpeg(300, 300))
    with serve(str(root)) as base:
        yield base


@pytest.fixture
def policy():
    """Installs a policy for one test; the process's opener and policy are restored after it."""
    with safe_http.installed(FetchPolicy()):
        yield safe_http.install


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read()


@pytest.mark.parametrize(
    "ip,reason",
    [
        ("127.0.0.1", "loopback"),
        ("127.3.4.5", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link_local"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("0.0.0.0", "unspecified"),
        ("100.64.0.1", "not_global"),
        ("::1", "loopback"),
        ("fe80::1", "link_local"),
        ("fc00::1", "private"),
        ("ff02::1", "multicast"),
        ("::", "unspecified"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "link_local"),
        ("64:ff9b::a9fe:a9fe", "link_local"),
        ("::ffff:10.0.0.1", "private"),
        ("8.8.8.8", None),
        ("1.1.1.1", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_non_public_addresses_are_classified(ip, reason):
    assert safe_http.non_public_reason(ipaddress.ip_address(ip)) == reason
    assert FetchPolicy().address_refusal(ip) == reason
    assert FetchPolicy(allow_private_networks=True).address_refusal(ip) is None


def test_loopback_refused_by_default_and_allowed_when_lifted(server, policy):
    port = server.rsplit(":", 1)[1]
    policy(FetchPolicy())
    for host in ("127.0.0.1", "localhost", "[::1]", "0x7f.1"):
        with pytest.raises(BlockedAddress) as err:
            fetch(f"http://{host}:{port}/img.jpg")
        assert str(err.value).startswith("blocked_address: ")
    policy(FetchPolicy(allow_private_networks=True))
    assert fetch(f"{server}/img.jpg")[:2] == b"\xff\xd8"


def test_blocked_addresses_are_refused_before_any_connection(policy, monkeypatch):
    """169.254.169.254 and private ranges never reach connect()."""
    connects = []
    real_connect = safe_http.socket.socket.connect
    monkeypatch.setattr(safe_http.socket.socket, "connect", lambda s, a: connects.append(a) or real_connect(s, a))
    policy(FetchPolicy())
    for url in (
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/x.jpg",
        "http://[fe80::1]/x.jpg",
        "http://[::ffff:169.254.169.254]/x.jpg",
    ):
        with pytest.raises(BlockedAddress):
            fetch(url)
    assert connects == []


@pytest.mark.parametrize(
    "target,message",
    [
        ("http://127.0.0.2:{port}/img.jpg", "blocked_address: 127.0.0.2 -> 127.0.0.2 (loopback)"),
        ("http://[::1]:{port}/img.jpg", "blocked_address: ::1 -> ::1 (loopback)"),
        (
            "http://169.254.169.254/latest/meta-data/",
            "blocked_address: 169.254.169.254 -> 169.254.169.254 (link_local)",
        ),
        ("http://10.0.0.1/x.jpg", "blocked_address: 10.0.0.1 -> 10.0.0.1 (private)"),
    ],
)
def test_redirect_to_blocked_address_is_refused(server, policy, target, message):
    """The first hop (127.0.0.1, allow-listed) is fetched; the redirect's target is checked again."""
    policy(LOOPBACK_ONLY)
    port = server.rsplit(":", 1)[1]
    assert fetch(f"{server}/redirect/img.jpg")[:2] == b"\xff\xd8"  # an allowed redirect is followed
    with pytest.raises(BlockedAddress) as err:
        fetch(f"{server}/redirect-to?url=" + urllib.request.quote(target.format(port=port), safe=""))
    assert str(err.value).startswith(message)


def test_only_http_and_https(server, policy, tmp_path):
    policy(LOOPBACK_ONLY)
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    for url in (f"file://{secret}", "ftp://127.0.0.1/x.jpg", "data:text/plain,hello"):
        with pytest.raises(FetchError) as err:
            fetch(url)
        assert str(err.value).startswith("download_error: unsupported scheme")
    # A redirect to file:// or ftp:// is refused too (the former by urllib, the latter by us).
    with pytest.raises(urllib.error.HTTPError, match="not allowed"):
        fetch(f"{server}/redirect-to?url=" + urllib.request.quote(f"file://{secret}", safe=""))
    with pytest.raises(FetchError, match="^download_error: redirect to unsupported scheme 'ftp'"):
        fetch(f"{server}/redirect-to?url=" + urllib.request.quote("ftp://127.0.0.1/x", safe=""))
    # The opener has no handler for other schemes at all.
    opener = urllib.request._opener
    assert isinstance(opener, safe_http.SafeOpener)
    assert set(opener.handle_open) == {"http", "https"}
    assert not any(isinstance(h, urllib.request.ProxyHandler) for h in opener.handlers)  # no env proxies


def test_byte_cap_on_content_length_and_while_streaming(server, policy):
    policy(LOOPBACK_ONLY)  # max_bytes=100_000
    assert len(fetch(f"{server}/small.bin")) == 50_000
    assert len(fetch(f"{server}/huge/100000")) == 100_000  # exactly the cap is fine
    assert len(fetch(f"{server}/huge-chunked/100000")) == 100_000
    with pytest.raises(TooLarge, match=r"^too_large: Content-Length 100001 > 100000 bytes"):
        fetch(f"{server}/huge/100001")
    with pytest.raises(TooLarge, match=r"^too_large: > 100000 bytes"):
        fetch(f"{server}/huge-chunked/50000000")  # stops reading right after the cap


def test_http_errors_keep_their_status(server, policy):
    policy(LOOPBACK_ONLY)
    with pytest.raises(urllib.error.HTTPError) as err:
        fetch(f"{server}/status/503")
    assert err.value.code == 503
    with pytest.raises(FetchError, match=r"^download_error: connection refused by 127.0.0.1:1"):
        fetch("http://127.0.0.1:1/x.jpg")
    # The server stops after a few of the 1000 announced bytes: a short body is an error, not an image.
    with pytest.raises(FetchError, match=r"^download_error: incomplete body: \d+ of 1000 bytes"):
        fetch(f"{server}/drip/0.25")


def test_deadline_against_a_dripping_server(server, policy):
    policy(FetchPolicy(allowed_networks=("127.0.0.1/32",), total_timeout=0.6))
    start = time.monotonic()
    with pytest.raises(FetchError, match=r"^download_error: deadline of 0.6s exceeded"):
        fetch(f"{server}/drip/20")  # one byte per 0.1 s: the 5 s socket timeout never fires
    assert time.monotonic() - start < 2.5
    start = time.monotonic()
    with pytest.raises(FetchError, match=r"^download_error: deadline of 0.6s exceeded"):
        fetch(f"{server}/drip-headers/20")  # the same while the headers are still arriving
    assert time.monotonic() - start < 2.5


def test_https_goes_through_the_checked_connection(server, policy):
    port = server.rsplit(":", 1)[1]
    policy(FetchPolicy())
    with pytest.raises(BlockedAddress, match=r"^blocked_address: 127.0.0.1"):
        fetch(f"https://127.0.0.1:{port}/img.jpg")  # refused before any TLS
    policy(LOOPBACK_ONLY)
    with pytest.raises(Exception) as err:  # a plain-HTTP port cannot complete a TLS handshake
        fetch(f"https://127.0.0.1:{port}/img.jpg")
    assert "SSL" in str(err.value) or "ssl" in str(err.value)


def test_robots_header_refused_before_reading_the_body(server, policy):
    policy(
        FetchPolicy(
            allowed_networks=("127.0.0.1/32",),
            disallowed_header_directives=("noai", "noimageai"),
            user_agent_token="dalle-pipeline",
        )
    )
    with pytest.raises(RobotsDisallowed, match="^robots_disallowed: X-Robots-Tag: noai"):
        fetch(f"{server}/noai/img.jpg")
    assert fetch(f"{server}/img.jpg")[:2] == b"\xff\xd8"


def test_decompression_bomb_is_refused_before_decoding():
    """The header gate answers from the PNG header; the decoder (img2dataset's Resizer) never runs."""
    from pipeline.download.shard_downloader import HeaderGate

    calls = []
    gate = HeaderGate(DownloadConfig(), 0.5, 2.0, inner=lambda stream, bbox: calls.append(1))
    bomb = png_bomb(30000, 30000)
    assert len(bomb) < 1000
    start = time.monotonic()
    out = gate(io.BytesIO(bomb))
    assert out[:5] == (None,) * 5 and out[5].startswith("too_many_pixels: ")
    # Under PIL's own 2x bomb limit but over our cap: our check, with the size in the detail.
    out = HeaderGate(DownloadConfig(max_pixels=10_000_000), 0.5, 2.0, inner=lambda s, b: calls.append(1))(
        io.BytesIO(png_bomb(4000, 4000))
    )
    assert out[5] == "too_many_pixels: 4000x4000 = 16000000 pixels > 10000000"
    assert calls == [] and time.monotonic() - start < 1.0


def test_policy_from_download_config():
    cfg = DownloadConfig(allow_private_networks=True, max_bytes=123, total_timeout=4.5)
    p = FetchPolicy.from_download_config(cfg)
    assert (p.allow_private_networks, p.max_bytes, p.total_timeout) == (True, 123, 4.5)
    assert p.disallowed_header_directives == ("noai", "noimageai") and p.user_agent_token == "dalle-pipeline"


def test_dns_failure_and_rebinding(server, policy, monkeypatch):
    """A name is resolved by us at each connect, and the address we check is the one we connect to.

    The resolver is faked (these tests send no DNS traffic): 'rebind.test' first answers the allowed
    127.0.0.1, then, for the redirect's connection, 127.0.0.2 — the classic rebinding switch.
    """
    port = int(server.rsplit(":", 1)[1])
    real = safe_http.socket.getaddrinfo
    answers = iter(["127.0.0.1", "127.0.0.2"])
    connects = []

    def fake_getaddrinfo(host, port_, *args):
        if host == "rebind.test":
            return real(next(answers), port_, *args)
        if host == "mixed.test":  # a blocked and an allowed address: only the allowed one is dialled
            return real("169.254.169.254", port_, *args) + real("127.0.0.1", port_, *args)
        raise safe_http.socket.gaierror(-2, "Name or service not known")

    real_connect = safe_http.socket.socket.connect
    monkeypatch.setattr(safe_http.socket, "getaddrinfo", fake_getaddrinfo)
    monkeypatch.setattr(safe_http.socket.socket, "connect", lambda s, a: connects.append(a[0]) or real_connect(s, a))
    policy(LOOPBACK_ONLY)
    with pytest.raises(FetchError, match=r"^download_error: DNS failure for nohost.test: \[Errno -2\]"):
        fetch("http://nohost.test/x.jpg")
    assert fetch(f"http://mixed.test:{port}/img.jpg")[:2] == b"\xff\xd8"
    assert connects == ["127.0.0.1"]
    with pytest.raises(BlockedAddress, match=r"^blocked_address: rebind.test -> 127.0.0.2 \(loopback\)"):
        fetch(f"http://rebind.test:{port}/redirect/img.jpg")
    assert connects == ["127.0.0.1", "127.0.0.1"]  # the first hop only; 127.0.0.2 was never dialled


def test_installed_restores_the_process_opener(server):
    before = urllib.request._opener
    with safe_http.installed(FetchPolicy()):
        with pytest.raises(BlockedAddress):
            fetch(f"{server}/img.jpg")
    assert urllib.request._opener is before  # other urllib users in the process are left as found


# --- issue 10: address rule gaps, quoting, politeness, DNS and TLS inside the deadline ----------------
@pytest.mark.parametrize(
    "ip,reason",
    [
        ("2002:7f00:1::1", "loopback"),
        ("2002:a9fe:a9fe::1", "link_local"),
        ("2002:0a00:0001::1", "private"),
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback"),  # Teredo, client 127.0.0.1 (obfuscated)
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "private"),  # Teredo, client 10.0.0.1
        ("2002:0808:0808::1", None),  # 6to4 of a public address
    ],
)
def test_6to4_and_teredo_are_judged_by_their_embedded_ipv4(ip, reason):
    assert FetchPolicy().address_refusal(ip) == reason


def test_urls_with_spaces_and_non_ascii_are_quoted_once(server, policy, tmp_path):
    assert safe_http.quote_url("http://h/a b/ü.jpg?q=x y") == "http://h/a%20b/%C3%BC.jpg?q=x%20y"
    assert safe_http.quote_url("http://h/a%20b.jpg") == "http://h/a%20b.jpg"  # already quoted: unchanged
    assert safe_http.quote_url("http://bücher.example/x") == "http://xn--bcher-kva.example/x"
    policy(LOOPBACK_ONLY)
    assert fetch(f"{server}/spaced name.jpg")[:2] == b"\xff\xd8"  # http.client alone: InvalidURL


def test_retry_after_header_forms():
    assert safe_http.retry_after_s("3") == 3.0
    assert safe_http.retry_after_s(None) is None and safe_http.retry_after_s("soon") is None
    assert safe_http.retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past


def test_429_is_retried_after_retry_after_within_the_deadline(server, policy):
    policy(FetchPolicy(allowed_networks=("127.0.0.1/32",), total_timeout=5.0, busy_retries=2))
    start = time.monotonic()
    assert fetch(f"{server}/busy/2/img.jpg")[:2] == b"\xff\xd8"  # two 429s, then the image
    assert time.monotonic() - start >= 1.9  # waited Retry-After (1 s) twice
    policy(FetchPolicy(allowed_networks=("127.0.0.1/32",), total_timeout=5.0, busy_retries=1))
    with pytest.raises(urllib.error.HTTPError, match="429"):
        fetch(f"{server}/busy/5/small.bin")  # still busy after its one retry: the 429 stays visible
    policy(FetchPolicy(allowed_networks=("127.0.0.1/32",), total_timeout=0.5, busy_retries=2))
    with pytest.raises(FetchError, match=r"host busy: 127.0.0.1 asked to wait"):
        fetch(f"{server}/busy/1/img2.jpg")  # Retry-After 1 s does not fit in a 0.5 s deadline


def test_per_host_cap_bounds_concurrent_fetches(tmp_path):
    import threading

    from pipeline.demo.server import DemoServer

    (tmp_path / "img.jpg").write_bytes(plain_jpeg(300, 300))
    srv = DemoServer(str(tmp_path))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        with safe_http.installed(FetchPolicy(allowed_networks=("127.0.0.1/32",), max_per_host=2)):
            threads = [threading.Thread(target=fetch, args=(f"{srv.base_url}/slow/0.3/img.jpg",)) for _ in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert srv.peak_slow == 2
    finally:
        srv.shutdown()
        srv.server_close()


def test_tls_handshake_is_inside_the_deadline(policy):
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)  # accepts the TCP connection, never answers the ClientHello
    try:
        policy(FetchPolicy(allowed_networks=("127.0.0.1/32",), total_timeout=0.6))
        start = time.monotonic()
        with pytest.raises(FetchError, match=r"deadline of 0.6s exceeded"):
            fetch(f"https://127.0.0.1:{silent.getsockname()[1]}/x.jpg")  # socket timeout is 5 s
        assert time.monotonic() - start < 2.5
    finally:
        silent.close()


def test_one_retry_of_a_temporary_dns_failure(server, policy, monkeypatch):
    port = int(server.rsplit(":", 1)[1])
    real = safe_http.socket.getaddrinfo
    calls = []

    def flaky(host, port_, *args):
        calls.append(host)
        if host == "flaky.test" and len(calls) == 1:
            raise safe_http.socket.gaierror(safe_http.socket.EAI_AGAIN, "Temporary failure in name resolution")
        if host == "flaky.test":
            return real("127.0.0.1", port_, *args)
        raise safe_http.socket.gaierror(safe_http.socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(safe_http.socket, "getaddrinfo", flaky)
    policy(LOOPBACK_ONLY)
    assert fetch(f"http://flaky.test:{port}/img.jpg")[:2] == b"\xff\xd8" and calls == ["flaky.test"] * 2
    calls.clear()
    with pytest.raises(FetchError, match="DNS failure for down.test"):
        fetch("http://down.test/x.jpg")
    assert calls == ["down.test"] * 2  # one retry, not more
