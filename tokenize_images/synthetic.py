"""Small dataset roots in the build_dataset shard format, for tests, the benchmark and smoke runs.

Images are coloured shapes on plain backgrounds (what the demo's synthetic source serves), optionally
mixed with real photos, plus rows whose bytes are deliberately undecodable.
"""

from __future__ import annotations

import glob as _glob
import hashlib
import io
import os

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

from common import schemas, storage

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["circle", "square", "triangle"]


def shape_image(rng: np.random.Generator, width: int, height: int) -> tuple[Image.Image, str]:
    bg, fg = rng.choice(len(COLOURS), size=2, replace=False)
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    img = Image.new("RGB", (width, height), COLOURS[bg])
    draw = ImageDraw.Draw(img)
    r = int(min(width, height) * rng.uniform(0.2, 0.4))
    cx, cy = int(rng.integers(r, width - r)), int(rng.integers(r, height - r))
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=COLOURS[fg])
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=COLOURS[fg])
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=COLOURS[fg])
    return img, f"a {COLOURS[fg]} {shape} on a {COLOURS[bg]} background"


def jpeg(img: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_dataset(
    root: str,
    shards: int = 2,
    rows_per_shard: int = 8,
    size_range: tuple[int, int] = (64, 96),
    corrupt_rows: int = 0,
    photos: str | None = None,
    seed: int = 0,
) -> list[str]:
    """Write shards/NNNNN.parquet + manifest.json. Corrupt rows go into the first shard. Returns keys."""
    rng = np.random.default_rng(seed)
    photo_files = sorted(_glob.glob(os.path.join(photos, "*.jpg"))) if photos else []
    keys, n, listed = [], 0, []
    for s in range(shards):
        rows = []
        for i in range(rows_per_shard):
            url = f"http://example.invalid/{s}/{i}.jpg"
            if photo_files and i % 3 == 2:
                img = Image.open(photo_files[n % len(photo_files)]).convert("RGB")
                img.thumbnail((size_range[1], size_range[1]))
                caption = f"a photo number {n}"
            else:
                img, caption = shape_image(rng, int(rng.integers(*size_range)), int(rng.integers(*size_range)))
            data = jpeg(img)
            if s == 0 and i < corrupt_rows:  # not an image / a JPEG cut in half
                data = b"this is not an image" if i % 2 == 0 else data[: len(data) // 3]
            rows.append(
                {
                    "key": schemas.row_key("synthetic", url, n),
                    "url": url,
                    "caption": caption,
                    "image": data,
                    "width": img.width,
                    "height": img.height,
                    "original_width": img.width,
                    "original_height": img.height,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "source": "synthetic",
                }
            )
            n += 1
        keys += [r["key"] for r in rows]
        listed.append({"path": f"{s:05d}.parquet", "rows": len(rows)})
        storage.write_parquet_atomic(
            storage.join(root, "shards", f"{s:05d}.parquet"), pa.Table.from_pylist(rows, schema=schemas.DATASET_SHARD)
        )
    storage.write_json_atomic(
        storage.join(root, "manifest.json"),
        {
            "format": schemas.DATASET_FORMAT,
            "config": {"synthetic": True, "seed": seed},
            "config_hash": f"synthetic-{seed}",
            "versions": {},
            "shards": listed,  # as build_dataset lists them: encode_tokens plans from these row counts
            "counts": {"kept": n},
            "created": "synthetic",
        },
    )
    return keys
