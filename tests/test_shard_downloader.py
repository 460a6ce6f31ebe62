"""download_shard against the real demo server: exact reasons per row, sizes, hashes, real photos."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import urllib.request

import pyarrow as pa
import pytest
from PIL import Image

from common import schemas
from pipeline.config import DownloadConfig
from pipeline.demo.server import serve
from pipeline.demo.source import write_demo_source
from pipeline.download.shard_downloader import ROBOTS_MESSAGE, classify, download_shard

MAX_BYTES = 300_000


@pytest.fixture(scope="module")
def demo(tmp_path_factory, shared_data):
    photos = shared_data / "photos"
    out = str(tmp_path_factory.mktemp("demo"))
    os.makedirs(os.path.join(out, "www", "photos"))
    for name in os.listdir(photos):
        shutil.copy(photos / name, os.path.join(out, "www", "photos", name))
    with serve(os.path.join(out, "www")) as base:
        yield write_demo_source(out, base, n_good=12, seed=1, max_bytes=MAX_BYTES)


def candidates(urls_captions: list[tuple[str | None, str]]) -> pa.Table:
    n = len(urls_captions)
    return pa.table(
        {
            "key": [hashlib.sha1(f"{i}".encode()).hexdigest()[:16] for i in range(n)],
            "source": ["test"] * n,
            "url": [u for u, _ in urls_captions],
            "caption": [c for _, c in urls_captions],
            "width": pa.nulls(n, pa.int64()),
            "height": pa.nulls(n, pa.int64()),
        },
        schema=schemas.CANDIDATE,
    )


def config(**kw) -> DownloadConfig:
    return DownloadConfig(
        **{
            "allow_private_networks": True,
            "max_bytes": MAX_BYTES,
            "thread_count": 8,
            "timeout": 5.0,
            "total_timeout": 10.0,
            **kw,
        }
    )


def served_bytes(demo, url: str) -> bytes:
    rel = url.split(demo.base_url + "/", 1)[1].replace("redirect/", "", 1)
    with open(os.path.join(demo.www_dir, rel), "rb") as f:
        return f.read()


def assert_partition(rows: pa.Table, kept: pa.Table, rejected: pa.Table) -> None:
    assert kept.schema == schemas.DATASET_SHARD and rejected.schema == schemas.REJECTED
    assert kept.num_rows + rejected.num_rows == rows.num_rows
    assert sorted(kept["key"].to_pylist() + rejected["key"].to_pylist()) == sorted(rows["key"].to_pylist())
    for table in (kept, rejected):
        keys = table["key"].to_pylist()
        assert keys == sorted(keys)


def test_demo_rows_get_their_expected_reasons(demo, tmp_path):
    # Rows that reach the download: everything the caption side lets through (both duplicate rows
    # are downloaded here; choosing between them is the build's cross-shard job, not this one's).
    image_side = [
        r
        for r in demo.expected
        if r["expected"] not in set(schemas.CAPTION_REASONS) - {"duplicate_url"}
        or "known only after download" in r.get("detail", "")
    ]
    expected = {
        r["url"]: "kept" if r["expected"] in ("duplicate_image", "duplicate_url") else r["expected"] for r in image_side
    }
    bad_input = [(None, "a row without a URL"), ("", "an empty URL"), ("javascript:alert(1)", "a script URL")]
    rows = candidates(sorted({(r["url"], r["caption"]) for r in image_side}) + bad_input)

    opener_before = urllib.request._opener
    kept, rejected = download_shard(rows, config(), 0.5, 2.0, str(tmp_path))

    assert urllib.request._opener is opener_before and os.listdir(tmp_path) == []  # process and work_dir as found
    assert_partition(rows, kept, rejected)
    got = {r["url"]: r["reason"] for r in rejected.to_pylist()}
    got.update({u: "kept" for u in kept["url"].to_pylist()})
    assert {u: got[u] for u in expected} == expected
    assert all(got[u] == "download_error" for u, _ in bad_input)
    assert set(expected.values()) >= {
        "kept",
        "download_error",
        "decode_error",
        "too_large",
        "too_many_pixels",
        "robots_disallowed",
        "too_small",
        "aspect_ratio",
    }

    details = {
        r["url"].rsplit("/", 2)[-2] + "/" + r["url"].rsplit("/", 1)[-1]: r["detail"]
        for r in rejected.to_pylist()
        if (r["url"] or "").startswith("http")
    }
    assert details["images/missing.jpg"] == "HTTP 404 Not Found"
    assert details["127.0.0.1:1/refused.jpg"].startswith("connection refused")
    assert details["hostile/truncated.jpg"].startswith("truncated JPEG")
    assert details["hostile/page.html"].startswith("not a decodable image")
    assert details[f"huge/{MAX_BYTES + 1_000_000}"] == f"Content-Length {MAX_BYTES + 1_000_000} > {MAX_BYTES} bytes"
    assert details[f"huge-chunked/{MAX_BYTES + 1_000_000}"].startswith(f"> {MAX_BYTES} bytes")
    assert "30000" in details["hostile/bomb.png"] or "900000000" in details["hostile/bomb.png"]
    assert details["hostile/tiny.jpg"] == "200x200, short side 200 < 256"
    assert details["hostile/wide.jpg"] == "768x256, width/height 3.000 outside [0.5, 2]"
    assert details["hostile/noai.jpg"].startswith("X-Robots-Tag: noai")

    for row in kept.to_pylist():
        data = served_bytes(demo, row["url"])
        with Image.open(io.BytesIO(data)) as original:
            assert (row["original_width"], row["original_height"]) == original.size
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
        with Image.open(io.BytesIO(row["image"])) as stored:
            assert stored.format == "JPEG" and stored.size == (row["width"], row["height"])
        assert min(row["width"], row["height"]) == 256  # every demo image is >= 256: brought to 256
        assert abs(row["width"] / row["height"] - row["original_width"] / row["original_height"]) < 0.01
        assert row["caption"] and row["source"] == "test"
    dup = [r["sha256"] for r in kept.to_pylist() if "dup_image" in r["url"]]
    assert len(dup) == 2 and dup[0] == dup[1]  # same bytes, same hash: the build rejects one


@pytest.mark.parametrize("min_size,image_size", [(256, 256), (100, 300)])
def test_real_photos_as_their_sizes_dictate(demo, shared_data, tmp_path, min_size, image_size):
    names = sorted(os.listdir(shared_data / "photos"))
    rows = candidates([(f"{demo.base_url}/photos/{n}", f"a real photograph number {i}") for i, n in enumerate(names)])
    kept, rejected = download_shard(
        rows, config(min_image_size=min_size, image_size=image_size), 0.5, 2.0, str(tmp_path)
    )
    assert_partition(rows, kept, rejected)
    by_url = {r["url"]: r for r in kept.to_pylist()}
    reasons = {r["url"]: r["reason"] for r in rejected.to_pylist()}
    for name in names:
        w, h = (int(v) for v in name[:-4].split("_"))
        url = f"{demo.base_url}/photos/{name}"
        if min(w, h) < min_size:
            assert reasons[url] == "too_small", name
        elif not 0.5 <= w / h <= 2.0:
            assert reasons[url] == "aspect_ratio", name
        else:
            row = by_url[url]
            assert (row["original_width"], row["original_height"]) == (w, h)
            short = min(row["width"], row["height"])
            assert short == min(image_size, min(w, h)), name  # brought down to image_size, never up
            assert abs(row["width"] / row["height"] - w / h) < 0.01
    assert len(by_url) == sum(
        1
        for n in names
        if min(map(int, n[:-4].split("_"))) >= min_size
        and 0.5 <= int(n.split("_")[0]) / int(n[:-4].split("_")[1]) <= 2.0
    )


def test_empty_shard(tmp_path):
    kept, rejected = download_shard(candidates([]), config(), 0.5, 2.0, str(tmp_path))
    assert kept.num_rows == rejected.num_rows == 0


@pytest.mark.parametrize(
    "status,message,reason,detail",
    [
        ("failed_to_download", "HTTP Error 404: Not Found", "download_error", "HTTP 404 Not Found"),
        ("failed_to_download", "HTTP Error 503: Service Unavailable", "download_error", "HTTP 503 Service Unavailable"),
        (
            "failed_to_download",
            "<urlopen error [Errno -2] Name or service not known>",
            "download_error",
            "DNS failure: [Errno -2] Name or service not known",
        ),
        (
            "failed_to_download",
            "The read operation timed out",
            "download_error",
            "timeout: The read operation timed out",
        ),
        (
            "failed_to_download",
            "<urlopen error [Errno 111] Connection refused>",
            "download_error",
            "connection refused: [Errno 111] Connection refused",
        ),
        ("failed_to_download", ROBOTS_MESSAGE, "robots_disallowed", ROBOTS_MESSAGE),
        (
            "failed_to_download",
            "blocked_address: 10.0.0.1 -> 10.0.0.1 (private)",
            "blocked_address",
            "10.0.0.1 -> 10.0.0.1 (private)",
        ),
        ("failed_to_download", "<urlopen error too_large: > 5 bytes>", "too_large", "> 5 bytes"),
        ("failed_to_resize", "Image decoding error", "decode_error", "Image decoding error"),
        ("failed_to_resize", "too_small: 10x10, short side 10 < 256", "too_small", "10x10, short side 10 < 256"),
        ("failed_to_download", "weird: not a reason", "download_error", "weird: not a reason"),
        ("failed_to_download", None, "download_error", "no detail (status failed_to_download)"),
    ],
)
def test_classify(status, message, reason, detail):
    assert classify(status, message) == (reason, detail)
