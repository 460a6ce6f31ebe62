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

from pipeline.demo.source import (
    BACKGROUNDS,
    COLOURS,
    LATTICE,
    RELATIONS,
    SIZES,
    describe_and_draw,
    draw_scene,
    write_demo_source,
)

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


@pytest.mark.parametrize("layout", ["lattice", "free"])
@pytest.mark.parametrize("seed", range(3))
def test_captions_describe_the_image_exactly(seed, layout):
    rng = random.Random(seed)
    for _ in range(15):
        caption, image = describe_and_draw(rng, layout)
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


def test_lattice_shapes_fill_whole_cells_of_the_centre_square():
    """Every shape's box lies on cell edges of the centre square (the crop later stages take), so that one dVAE token
    per cell holds one fixed piece of one shape; the sizes stay 0.2 and 0.4 of the short side."""
    rng = random.Random(11)
    for _ in range(60):
        caption, image = describe_and_draw(rng)
        pixels = np.asarray(image).astype(int)  # before JPEG: exact edges
        h, w, _ = pixels.shape
        short = min(w, h)
        x0, y0 = (w - short) / 2, (h - short) / 2
        objects, _, _ = parse(caption)
        for size, colour, _shape in objects:
            ys, xs = np.nonzero((pixels == COLOURS[colour]).all(axis=2))
            # Within 3 source pixels (PIL's rasterising of a triangle's corners): under one pixel at the demo's 80 px.
            edges = np.array([xs.min() - x0, xs.max() - x0, ys.min() - y0, ys.max() - y0]) / short * LATTICE
            assert np.abs(edges - edges.round()).max() <= 3 * LATTICE / short, (caption, edges)
            cells = edges[1] - edges[0], edges[3] - edges[2]
            assert round(max(cells)) == SIZES[size] * LATTICE, (caption, cells)
            assert 1 <= edges.round().min() and edges.round().max() <= LATTICE - 1, (
                caption
            )  # a cell of background all round


def test_the_layout_must_be_known():
    with pytest.raises(ValueError, match="'lattice' or 'free'"):
        describe_and_draw(random.Random(0), "grid")


def test_scene_keys_tell_apart_what_a_resize_could_merge():
    """Two scenes with the same caption and centres are one image once resized to the same short side, unless their
    canvases differ in shape: the key holds the canvas shape, and different shapes differ after any resize."""
    rng = random.Random(3)
    shapes: dict[tuple, set[tuple[int, int]]] = {}
    for _ in range(3000):
        caption, image, (key_caption, centres, canvas) = draw_scene(rng)
        assert key_caption == caption and len(centres) == len(parse(caption)[0])
        w, h = image.size
        resized = (256, round(256 * h / w)) if w <= h else (round(256 * w / h), 256)
        shapes.setdefault((caption, centres, canvas), set()).add(resized)
    # Two canvas shapes of the same scene never resize to the same shape (one key may resize to two, harmlessly).
    by_scene: dict[tuple, list[set]] = {}
    for (caption, centres, _canvas), resized in shapes.items():
        by_scene.setdefault((caption, centres), []).append(resized)
    assert any(len(v) > 1 for v in by_scene.values())  # the check has cases
    for sets in by_scene.values():
        assert sum(len(r) for r in sets) == len(set().union(*sets))


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
