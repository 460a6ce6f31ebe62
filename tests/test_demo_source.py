"""The demo source: captions describe their images exactly; outputs are deterministic; CLIs work."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.demo.source import BACKGROUNDS, COLOURS, RELATIONS, describe_and_draw, write_demo_source

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse(caption: str) -> tuple[list[tuple[str, str, str]], str | None, str]:
    """([(size, colour, shape)...], relation, background) from a demo caption."""
    body, background = caption[2:].split(" on a ")
    background = background.removesuffix(" background")
    for relation in RELATIONS:
        if f" {relation} a " in body:
            first, second = body.split(f" {relation} a ")
            return [tuple(first.split()), tuple(second.split())], relation, background
    return [tuple(body.split())], None, background


@pytest.mark.parametrize("seed", range(3))
def test_captions_describe_the_image_exactly(seed):
    rng = random.Random(seed)
    for _ in range(15):
        caption, image = describe_and_draw(rng)
        objects, relation, background = parse(caption)
        # Decode from JPEG, as later stages will see it.
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90)
        pixels = np.asarray(Image.open(buf).convert("RGB")).astype(int)
        h, w, _ = pixels.shape
        assert 256 <= w <= 320 and 256 <= h <= 320
        assert np.abs(pixels[1, 1] - BACKGROUNDS[background]).max() < 20, caption
        present = {name for name, rgb in COLOURS.items() if (np.abs(pixels - rgb).max(axis=2) < 35).sum() > 200}
        assert present == {colour for _, colour, _ in objects}, caption  # no colour more, none missing
        centres = []
        for size, colour, shape in objects:
            ys, xs = np.nonzero(np.abs(pixels - COLOURS[colour]).max(axis=2) < 35)
            area = len(xs) / min(w, h) ** 2
            assert (0.06 < area < 0.17) if size == "large" else (0.013 < area < 0.045), (caption, area)
            fill = len(xs) / ((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))
            expected_fill = {"square": (0.9, 1.01), "circle": (0.7, 0.88), "triangle": (0.4, 0.62)}[shape]
            assert expected_fill[0] < fill < expected_fill[1], (caption, fill)
            centres.append((xs.mean(), ys.mean()))
        if relation:
            (x1, y1), (x2, y2) = centres
            assert {"above": y1 < y2, "below": y1 > y2, "to the left of": x1 < x2, "to the right of": x1 > x2}[relation]


def test_deterministic_and_consistent(tmp_path):
    a = write_demo_source(str(tmp_path / "a"), "http://127.0.0.1:9", n_good=20, seed=5, max_bytes=1000)
    b = write_demo_source(str(tmp_path / "b"), "http://127.0.0.1:9", n_good=20, seed=5, max_bytes=1000)
    assert a.expected == b.expected
    for rel in ("images/000007.jpg", "hostile/bomb.png", "images/dup_image_a.jpg"):
        assert (tmp_path / "a" / "www" / rel).read_bytes() == (tmp_path / "b" / "www" / rel).read_bytes()
    assert sum(a.expected_counts.values()) == len(a.expected)
    assert a.expected_counts["kept"] == 20 + 2  # + the redirect and one of the duplicate images
    assert a.expected_counts["duplicate_url"] == a.expected_counts["duplicate_image"] == 1
    # The files hold exactly the rows expected.json lists.
    tsv = (tmp_path / "a" / "demo.tsv").read_text(encoding="utf-8").splitlines()
    cc3m = (tmp_path / "a" / "demo_cc3m.tsv").read_text(encoding="utf-8").splitlines()
    laion = pq.read_table(tmp_path / "a" / "demo_laion.parquet")
    assert tsv[0] == "url\tcaption" and len(tsv) - 1 + len(cc3m) + laion.num_rows == len(a.expected)
    assert laion.column_names == ["SAMPLE_ID", "URL", "TEXT", "WIDTH", "HEIGHT"]
    assert json.loads((tmp_path / "a" / "expected.json").read_text())["expected_counts"] == a.expected_counts
    # Good images are all different (no accidental duplicate_image).
    goods = [r["url"] for r in a.expected if r["expected"] == "kept" and "/images/0" in r["url"]]
    digests = {(tmp_path / "a" / "www" / u.split("9/", 1)[1]).read_bytes() for u in goods}
    assert len(digests) == len(goods) == 20


@pytest.mark.slow  # two subprocess drivers (server + source) with their imports: ~1-2.5 s
def test_server_and_source_command_lines(tmp_path):
    port_file = tmp_path / "port"
    server = subprocess.Popen(
        [
            sys.executable,
            "orchestration/demo_server.py",
            "--root",
            str(tmp_path / "www"),
            "--port",
            "0",
            "--port-file",
            str(port_file),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port_file.read_text()}"
        out = subprocess.run(
            [sys.executable, "orchestration/demo_source.py", "--out", str(tmp_path), "--base-url", base, "--n", "5"],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        assert json.loads(out)["expected_counts"]["kept"] == 7
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # plain urllib, loopback only
        with opener.open(f"{base}/images/000003.jpg", timeout=5) as r:
            assert Image.open(io.BytesIO(r.read())).format == "JPEG"
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 0
