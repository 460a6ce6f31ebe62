"""What keeps img2dataset's single consumer thread light: cached resize transforms (byte-identical to
the stock Resizer) and the image-header check run on the fetch threads."""

from __future__ import annotations

import io
import os
import threading

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from img2dataset import resizer as img2dataset_resizer

from pipeline.download import cached_transforms, shard_downloader
from pipeline.download.shard_downloader import download_shard
from tests.test_shard_downloader import candidates, config, demo  # noqa: F401 - `demo` is a fixture


def images(shared_data) -> list[bytes]:
    """Real photos (JPEG, several sizes) plus generated PNGs with alpha and odd sizes."""
    out = [p.read_bytes() for p in sorted((shared_data / "photos").iterdir())]
    rng = np.random.default_rng(0)
    for w, h in [(300, 301), (640, 257), (257, 700), (1000, 999)]:
        pixels = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels, "RGBA").save(buf, "PNG")
        out.append(buf.getvalue())
    return out


@pytest.mark.parametrize("mode", ["keep_ratio", "center_crop", "border"])
def test_cached_transforms_give_the_stock_resizers_bytes(shared_data, monkeypatch, mode):
    import albumentations

    data = images(shared_data)
    resizer = img2dataset_resizer.Resizer(
        image_size=256, resize_mode=mode, resize_only_if_bigger=True, encode_format="jpg", encode_quality=95
    )
    monkeypatch.setattr(img2dataset_resizer, "A", albumentations)  # the stock path, whatever ran before
    stock = [resizer(io.BytesIO(d)) for d in data]
    cached_transforms.install()
    assert isinstance(img2dataset_resizer.A, cached_transforms._CachingAlbumentations)
    cached = [resizer(io.BytesIO(d)) for d in data]
    assert all(s[-1] is None for s in stock)
    assert cached == stock  # image bytes, sizes and errors alike
    # one transform per argument set, however many images: the Resizer really builds them through `A`
    instances = img2dataset_resizer.A._instances
    assert 1 <= len(instances) <= 2, instances


def test_header_check_runs_on_fetch_threads(demo, tmp_path, monkeypatch):  # noqa: F811 - fixture
    """Every served body is judged once, on the thread that fetched it; the consumer thread (the one
    calling download_shard) only looks the verdict up. Refusals still land with their reasons."""
    threads: list[str] = []
    refusal = shard_downloader.HeaderGate.refusal

    def recording(self, data):
        threads.append(threading.current_thread().name)
        return refusal(self, data)

    monkeypatch.setattr(shard_downloader.HeaderGate, "refusal", recording)
    rows = candidates([(r["url"], r["caption"]) for r in demo.expected if r["url"].startswith(demo.base_url)])
    kept, rejected = download_shard(rows, config(), 0.5, 2.0, str(tmp_path))
    assert kept.num_rows + rejected.num_rows == rows.num_rows
    assert kept.num_rows > 0 and threads
    assert threading.current_thread().name not in threads, "a header check ran on the consumer thread"
    reasons = set(rejected["reason"].to_pylist())
    assert {"too_small", "aspect_ratio"} <= reasons  # refusals found on the fetch threads are still reported


def test_download_modules_load_without_img2dataset_cli():
    """shard_downloader uses img2dataset's own Downloader and Resizer, without running its package
    __init__ (its CLI pulls in torch, pandas and webdataset: seconds per fresh download worker)."""
    import subprocess
    import sys

    code = (
        "import sys, pipeline.download.shard_downloader as s, img2dataset.downloader as d, img2dataset.resizer as r; "
        "print('torch' in sys.modules, 'img2dataset.main' in sys.modules, s.Downloader is d.Downloader, "
        "s.Resizer is r.Resizer, d.__file__)"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True, env={**os.environ}
    ).stdout.split()
    assert out[:4] == ["False", "False", "True", "True"], out
    assert out[4].endswith(os.path.join("img2dataset", "downloader.py")) and "site-packages" in out[4]
