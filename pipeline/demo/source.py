"""Deterministic demo source: captioned synthetic images plus rows every filter must reject.

Good rows are coloured shapes on a plain background whose English caption describes them exactly
("a small red circle above a blue square on a gray background"): later stages learn these images,
so shapes, colours, sizes and positions follow the caption. Images are 256-320 px per side, so
they pass too_small=256 and the [1/2, 2] aspect bounds.

Mixed in are rows with a known expected outcome each (caption-side and image-side rejections,
duplicates, a redirect); `expected.json` lists every row with its expected reason ("kept" for kept
rows) and the counts per reason, so an end-to-end test can assert exact numbers.

Layout of OUT:
    www/                  what the demo server serves (start it with --root OUT/www)
    demo.tsv              generic tsv, header url<TAB>caption          (source spec tsv:OUT/demo.tsv)
    demo_cc3m.tsv         CC3M style, caption<TAB>url, no header       (cc3m:OUT/demo_cc3m.tsv)
    demo_laion.parquet    LAION style: SAMPLE_ID, URL, TEXT, WIDTH, HEIGHT (laion:OUT/demo_laion.parquet)
    expected.json

    python orchestration/demo_source.py --out DIR --base-url http://127.0.0.1:PORT --n 200
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import random
import struct
import zlib
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from common import storage

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 210, 40),
    "orange": (245, 140, 20),
    "purple": (140, 50, 170),
}
BACKGROUNDS = {"white": (250, 250, 250), "black": (15, 15, 15), "gray": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.2, "large": 0.4}  # side of the shape's bounding box, as a fraction of the short side
RELATIONS = ("above", "below", "to the left of", "to the right of")

# Caption-side rejections: (caption, expected reason). Their URLs point at real, unique images, so a
# filter that lets one through shows up as an extra kept row instead of hiding behind a 404.
CAPTION_REJECTS = (
    ("Ein kleiner roter Kreis über einem blauen Quadrat auf grauem Hintergrund", "non_english"),
    ("Un grand triangle vert à gauche d'un cercle jaune sur un fond blanc", "non_english"),
    ("Un pequeño cuadrado azul debajo de un círculo rojo sobre un fondo negro", "non_english"),
    ("red circle", "too_short"),
    ("a square", "too_short"),
    ("IMG_1234.JPG photographed on 2009-05-01", "boilerplate"),
    ("DSC01234.JPG - click to enlarge", "boilerplate"),
)


@dataclasses.dataclass
class DemoSource:
    out_dir: str
    www_dir: str  # --root for the demo server
    base_url: str
    sources: list[str]  # build_dataset --source specs, FORMAT:PATH
    expected: list[dict]  # one per input row: file, row, url, caption, expected[, dup_group]
    expected_counts: dict[str, int]  # reason (or "kept") -> rows
    config_overrides: dict[str, object]  # what the expectations assume (allow loopback, byte cap...)

    def expected_by_url(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for row in self.expected:
            out.setdefault(row["url"], []).append(row["expected"])
        return out


# Where the shapes go: on a lattice of LATTICE cells per side of the image's centre square (the crop every later
# stage takes), so that the 0.2 and 0.4 sizes are 2 and 4 cells and every shape's box lies on cell edges. The demo's
# dVAE works at 80 px with one token per 8x8 pixels (configs/dvae_demo.toml): one token per cell, so each token
# holds background, one colour, or one fixed piece of one shape, and a 512-code k-means of the pixel patches keeps
# 100% of held-out scenes (bench/patch_vq_ceiling.py). With free positions ("free": the layout before 2026-11-29,
# centres jittered by up to 0.02 and 0.08), an 8x8-pixel token holds any piece of a shape at any offset: at most
# 52.7% survive, and a 16x16 grid is needed, whose 256-token prior does not learn in the demo's CPU minutes
# (docs/tokens.md, "A scene lattice").
LATTICE = 10
NEAR_CENTRE = (0.4, 0.5, 0.6)  # one object: its centre on each axis; two objects: across the relation's axis
ALONG = (0.3, 0.7)  # two objects: the first and the second centre along the relation's axis
Layout = Literal["lattice", "free"]
ASPECT_STEP, ASPECT_STEPS = 0.02, 13  # canvas long/short side: 1.00, 1.02, ... 1.24


def describe_and_draw(rng: random.Random, layout: Layout = "lattice") -> tuple[str, Image.Image]:
    """One random scene and its exact caption."""
    caption, image, _ = draw_scene(rng, layout)
    return caption, image


def draw_scene(rng: random.Random, layout: Layout = "lattice") -> tuple[str, Image.Image, tuple]:
    """One random scene, its exact caption, and its key: (caption, centres, canvas shape). Two scenes with the same
    key look the same once resized to any short side (the build's keep-ratio resize), and would be duplicate_image.

    The canvas's aspect ratio is a multiple of ASPECT_STEP, so two different ratios stay apart after resizing."""
    if layout not in ("lattice", "free"):
        raise ValueError(f"layout must be 'lattice' or 'free', not {layout!r}")
    step = rng.randrange(ASPECT_STEPS)
    ratio = 1 + ASPECT_STEP * step
    short = rng.randint(256, int(320 / ratio))
    tall = step > 0 and rng.random() < 0.5
    width, height = (short, round(short * ratio)) if tall else (round(short * ratio), short)
    background = rng.choice(sorted(BACKGROUNDS))
    image = Image.new("RGB", (width, height), BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    colours = rng.sample(sorted(COLOURS), 2)
    objects = [(rng.choice(sorted(SIZES)), colours[i], rng.choice(SHAPES)) for i in range(2)]
    if layout == "lattice":  # centres as fractions of the centre square
        square = (short, short, (width - short) / 2, (height - short) / 2)
        near = lambda: rng.choice(NEAR_CENTRE)  # noqa: E731
        single, along, across = (near(), near()), ALONG, (near(), near())
    else:  # centres as fractions of the whole image
        square = (width, height, 0.0, 0.0)
        single, along = (_jitter(rng, 0.5), _jitter(rng, 0.5)), (_jitter(rng, 0.27), _jitter(rng, 0.73))
        across = (_jitter(rng, 0.5, 0.08), _jitter(rng, 0.5, 0.08))
    centres = []

    def put(obj: tuple[str, str, str], fx: float, fy: float) -> None:
        size, colour, shape = obj
        sw, sh, x0, y0 = square
        _shape(draw, shape, COLOURS[colour], x0 + fx * sw, y0 + fy * sh, SIZES[size] * short)
        centres.append((fx, fy))

    canvas = (step, tall) if layout == "lattice" else (width, height)
    if rng.random() < 0.3:  # one object, near the centre
        put(objects[0], *single)
        size, colour, shape = objects[0]
        caption = f"a {size} {colour} {shape} on a {background} background"
        return caption, image, (caption, tuple(centres), canvas)
    relation = rng.choice(RELATIONS)
    # The first object above or left of the second, or the other way round; two large shapes meet at most at an edge.
    alongs = along if relation in ("above", "to the left of") else along[::-1]
    for obj, a, c in zip(objects, alongs, across, strict=True):
        if relation in ("above", "below"):
            put(obj, c, a)
        else:
            put(obj, a, c)
    (s1, c1, h1), (s2, c2, h2) = objects
    caption = f"a {s1} {c1} {h1} {relation} a {s2} {c2} {h2} on a {background} background"
    return caption, image, (caption, tuple(centres), canvas)


def _jitter(rng: random.Random, centre: float, spread: float = 0.02) -> float:
    return centre + rng.uniform(-spread, spread)


def _shape(draw: ImageDraw.ImageDraw, shape: str, fill, cx: float, cy: float, side: float) -> None:
    half = side / 2
    box = (cx - half, cy - half, cx + half, cy + half)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:  # an upright triangle filling the box
        draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=fill)


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def plain_jpeg(width: int, height: int, colour=(90, 120, 200)) -> bytes:
    return jpeg_bytes(Image.new("RGB", (width, height), colour))


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (decoding it would need ~width*height bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"\0" * (width + 1) * 4)  # a few rows only: the header is what matters
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class _Writer:
    """Collects files under www/ and rows per output file, with their expected outcome."""

    def __init__(self, www: str, base_url: str):
        self.www, self.base_url = www, base_url.rstrip("/")
        self.rows: dict[str, list[dict]] = {"demo.tsv": [], "demo_cc3m.tsv": [], "demo_laion.parquet": []}
        self.hashes: set[str] = set()

    def put(self, rel: str, data: bytes) -> str:
        path = os.path.join(self.www, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        return f"{self.base_url}/{rel}"

    def row(self, file: str, url: str, caption: str, expected: str, **extra) -> None:
        self.rows[file].append(
            {"file": file, "row": len(self.rows[file]), "url": url, "caption": caption, "expected": expected, **extra}
        )


def write_demo_source(
    out_dir: str, base_url: str, n_good: int = 200, seed: int = 0, max_bytes: int = 20_000_000, hostile: bool = True
) -> DemoSource:
    """Write the demo images, URL lists and expected.json under out_dir; see the module docstring.

    `max_bytes` is download.max_bytes of the build: the oversized bodies are a little larger.
    `hostile=False` writes the good rows only (benchmarks).
    """
    rng = random.Random(seed)
    www = os.path.join(out_dir, "www")
    w = _Writer(www, base_url)

    drawn: set[tuple] = set()

    def unique_scene() -> tuple[str, bytes]:
        # Duplicates would be (correctly) rejected as duplicate_image: never make one, neither byte for byte nor
        # the same lattice scene on a canvas of the same shape (the build's resize would make them one image).
        while True:
            caption, image, key = draw_scene(rng)
            data = jpeg_bytes(image)
            digest = hashlib.sha256(data).hexdigest()
            if digest not in w.hashes and key not in drawn:
                w.hashes.add(digest)
                drawn.add(key)
                return caption, data

    good_urls = []
    for i in range(n_good):
        caption, data = unique_scene()
        url = w.put(f"images/{i:06d}.jpg", data)
        good_urls.append((url, caption))
        # Every 4th good row goes to the CC3M-style file, every 7th to the LAION one (with true sizes).
        if i % 4 == 3:
            w.row("demo_cc3m.tsv", url, caption, "kept")
        elif i % 7 == 6:
            with Image.open(io.BytesIO(data)) as im:
                w.row("demo_laion.parquet", url, caption, "kept", width=im.width, height=im.height)
        else:
            w.row("demo.tsv", url, caption, "kept")

    if hostile:
        _write_hostile(w, rng, unique_scene, good_urls, max_bytes)

    for rel in ("demo.tsv", "demo_cc3m.tsv"):
        # IANA TSV, as the tsv and cc3m readers read it: a line is a row, no quoting (quotes are text).
        with open(os.path.join(out_dir, rel), "w", newline="", encoding="utf-8") as f:
            rows = [["url", "caption"]] if rel == "demo.tsv" else []
            rows += [[r["url"], r["caption"]] if rel == "demo.tsv" else [r["caption"], r["url"]] for r in w.rows[rel]]
            for fields in rows:
                assert not any(c in field for field in fields for c in "\t\r\n"), fields
                f.write("\t".join(fields) + "\n")
    laion = w.rows["demo_laion.parquet"]
    pq.write_table(
        pa.table(
            {
                "SAMPLE_ID": pa.array(range(len(laion)), pa.int64()),
                "URL": [r["url"] for r in laion],
                "TEXT": [r["caption"] for r in laion],
                "WIDTH": pa.array([r.get("width") for r in laion], pa.int64()),
                "HEIGHT": pa.array([r.get("height") for r in laion], pa.int64()),
            }
        ),
        os.path.join(out_dir, "demo_laion.parquet"),
    )

    expected = [r for rows in w.rows.values() for r in rows]
    counts: dict[str, int] = {}
    for r in expected:
        counts[r["expected"]] = counts.get(r["expected"], 0) + 1
    source = DemoSource(
        out_dir=out_dir,
        www_dir=www,
        base_url=w.base_url,
        sources=[
            f"tsv:{os.path.join(out_dir, 'demo.tsv')}",
            f"cc3m:{os.path.join(out_dir, 'demo_cc3m.tsv')}",
            f"laion:{os.path.join(out_dir, 'demo_laion.parquet')}",
        ],
        expected=expected,
        expected_counts=dict(sorted(counts.items())),
        config_overrides={
            "download.allow_private_networks": True,
            "download.max_bytes": max_bytes,
            "download.min_image_size": 256,
            "captions.min_aspect_ratio": 0.5,
            "captions.max_aspect_ratio": 2.0,
        },
    )
    storage.write_json_atomic(os.path.join(out_dir, "expected.json"), dataclasses.asdict(source))
    return source


def _write_hostile(w: _Writer, rng: random.Random, unique_scene, good_urls, max_bytes: int) -> None:
    tsv = "demo.tsv"
    for caption, reason in CAPTION_REJECTS:
        _, data = unique_scene()
        w.row(tsv, w.put(f"images/caption_reject_{len(w.rows[tsv]):04d}.jpg", data), caption, reason)
    w.row(tsv, "file:///etc/passwd", "a large blue square on a white background", "invalid_url")

    # Image-side rejections: English captions that pass every caption filter.
    say = lambda: unique_scene()[0]  # noqa: E731 - a fresh plausible caption
    w.row(tsv, f"{w.base_url}/images/missing.jpg", say(), "download_error", detail="HTTP 404")
    w.row(tsv, "http://127.0.0.1:1/refused.jpg", say(), "download_error", detail="connection refused")
    w.row(
        tsv,
        w.put("hostile/page.html", b"<!doctype html><html><body><p>Not an image</p></body></html>"),
        say(),
        "decode_error",
        detail="not an image",
    )
    _, good = unique_scene()
    w.row(tsv, w.put("hostile/truncated.jpg", good[: len(good) // 2]), say(), "decode_error", detail="truncated JPEG")
    w.row(tsv, f"{w.base_url}/huge/{max_bytes + 1_000_000}", say(), "too_large", detail="Content-Length")
    w.row(tsv, f"{w.base_url}/huge-chunked/{max_bytes + 1_000_000}", say(), "too_large", detail="no Content-Length")
    w.row(tsv, w.put("hostile/bomb.png", png_bomb()), say(), "too_many_pixels", detail="30000x30000 PNG header")
    _, data = unique_scene()
    w.put("hostile/noai.jpg", data)
    w.row(tsv, f"{w.base_url}/noai/hostile/noai.jpg", say(), "robots_disallowed", detail="X-Robots-Tag: noai")
    w.row(tsv, w.put("hostile/tiny.jpg", plain_jpeg(200, 200)), say(), "too_small", detail="200x200")
    w.row(
        tsv,
        w.put("hostile/wide.jpg", plain_jpeg(768, 256, (200, 60, 60))),
        say(),
        "aspect_ratio",
        detail="768x256 (short side 256: passes too_small), known only after download",
    )

    # With metadata (LAION WIDTH/HEIGHT): refused before download, on the caption side.
    w.row(
        "demo_laion.parquet",
        w.put("hostile/wide_meta.jpg", plain_jpeg(900, 300, (60, 200, 60))),
        say(),
        "aspect_ratio",
        width=900,
        height=300,
        detail="900x300 from metadata",
    )

    # A redirect to an image served nowhere else: kept, with the redirect followed.
    caption, data = unique_scene()
    w.put("images/redirected.jpg", data)
    w.row(tsv, f"{w.base_url}/redirect/images/redirected.jpg", caption, "kept", detail="302 followed")

    # Duplicate URL across two sources: one row kept, the other duplicate_url (which one is the
    # build's tie-break; both rows carry the same dup_group).
    url, caption = good_urls[0] if good_urls else (w.put("images/dup_url.jpg", unique_scene()[1]), say())
    if not good_urls:
        w.row(tsv, url, caption, "kept", dup_group="url")
    else:
        next(r for r in w.rows[_file_of(w, url)] if r["url"] == url)["dup_group"] = "url"
    w.row("demo_cc3m.tsv", url, caption, "duplicate_url", dup_group="url")

    # Duplicate image: the same bytes at two URLs. One kept, the other duplicate_image.
    caption, data = unique_scene()
    w.row(tsv, w.put("images/dup_image_a.jpg", data), caption, "kept", dup_group="image")
    w.row(tsv, w.put("images/dup_image_b.jpg", data), caption, "duplicate_image", dup_group="image")


def _file_of(w: _Writer, url: str) -> str:
    return next(f for f, rows in w.rows.items() if any(r["url"] == url for r in rows))
