"""A pixel classifier for the demo's caption grammar: does an image show what its caption says?

The demo's captions are exact descriptions ("a small red circle above a large blue square on a gray
background", pipeline/demo/source.py), so a small rule-based reader of the pixels can score any image
against its caption: the dVAE's reconstructions (can the tokens hold the scene?) and the prior's samples
(does the model draw the caption?). Per image it reads:

  * background: the median of the border pixels, nearest of the 3 background colours;
  * each object: the largest connected blob of pixels nearest to the caption's colour (the 6 colours and
    the background form the palette), which must cover at least MIN_AREA of the image;
  * size: the blob's bounding-box side against the image's side (small 0.2, large 0.4: split at 0.3);
  * shape: a triangle is narrow at the top (its width at 1/4 of its height under 0.65 of that at 3/4);
    otherwise a square fills its box (fill >= 0.86) and a circle does not (pi/4 = 0.785);
  * relation: the centres of the two blobs along the stated axis;
  * nothing else: no blob of another foreground colour as large as MIN_AREA.

"Fully right" means all of these hold. The checks are tested on freshly drawn scenes at the demo's
resolution (tests/test_scene_check.py), where they are right on at least 99% of images.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
from scipy import ndimage

from pipeline.demo.source import BACKGROUNDS, COLOURS, RELATIONS, SHAPES, SIZES

MIN_AREA = 0.012  # of the image: a small triangle (half of a 0.2-side box) is 0.02
SIZE_SPLIT = (SIZES["small"] + SIZES["large"]) / 2
SQUARE_FILL = 0.86  # drawn at 64 px: squares fill 0.87-1.0 of their box, circles 0.69-0.84
TRIANGLE_TAPER = 0.65  # top/bottom width: triangles 0.3-0.5, circles 0.83-1.2, squares 1
_OBJECT = r"(small|large) (\w+) (circle|square|triangle)"
_CAPTION = re.compile(rf"^a {_OBJECT}(?: ({'|'.join(RELATIONS)}) a {_OBJECT})? on a (\w+) background$")


@dataclasses.dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[tuple[str, str, str], ...]  # (size, colour, shape), in caption order
    relation: str | None = None


def parse_caption(caption: str) -> Scene:
    m = _CAPTION.match(caption.strip().lower())
    if not m:
        raise ValueError(f"not a demo caption: {caption!r}")
    s1, c1, h1, relation, s2, c2, h2, background = m.groups()
    objects = ((s1, c1, h1),) if relation is None else ((s1, c1, h1), (s2, c2, h2))
    for _, colour, _ in objects:
        if colour not in COLOURS:
            raise ValueError(f"unknown colour {colour!r} in {caption!r}")
    if background not in BACKGROUNDS:
        raise ValueError(f"unknown background {background!r} in {caption!r}")
    return Scene(background, objects, relation)


@dataclasses.dataclass
class Blob:
    area: float  # fraction of the image
    side: float  # bounding-box side (the larger of width and height) over the image's short side
    shape: str
    cy: float
    cx: float


def _nearest(pixels: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> tuple[list[str], np.ndarray]:
    names = list(palette)
    colours = np.array([palette[n] for n in names], dtype=np.float32)
    dist = ((pixels[..., None, :].astype(np.float32) - colours) ** 2).sum(-1)
    return names, dist.argmin(-1)


def _blob(mask: np.ndarray) -> Blob | None:
    labels, n = ndimage.label(mask)
    if n == 0:
        return None
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    component = labels == (int(np.argmax(sizes)) + 1)
    ys, xs = np.nonzero(component)
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    fill = component.sum() / (h * w)
    rows = component[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    top, bottom = rows[int(h * 0.25)].sum(), rows[min(int(h * 0.75), h - 1)].sum()
    if top < TRIANGLE_TAPER * bottom:
        shape = "triangle"
    else:
        shape = "square" if fill >= SQUARE_FILL else "circle"
    return Blob(
        component.mean(), max(h, w) / min(mask.shape), shape, ys.mean() / mask.shape[0], xs.mean() / mask.shape[1]
    )


def check(image: np.ndarray, caption: str) -> dict[str, bool]:
    """Per-aspect verdicts for one (H, W, 3) uint8 image; "all" is the conjunction."""
    scene = parse_caption(caption)
    border = np.concatenate(
        [image[:2].reshape(-1, 3), image[-2:].reshape(-1, 3), image[:, :2].reshape(-1, 3), image[:, -2:].reshape(-1, 3)]
    )
    bg_names, bg_index = _nearest(np.median(border, axis=0)[None], BACKGROUNDS)
    background = bg_names[int(bg_index[0])]
    names, index = _nearest(image, {**COLOURS, "_background": BACKGROUNDS[background]})
    blobs = {name: _blob(index == i) for i, name in enumerate(names) if name != "_background"}
    found = [blobs[colour] for _, colour, _ in scene.objects]
    present = [b is not None and b.area >= MIN_AREA for b in found]
    out = {
        "background": background == scene.background,
        "colour": all(present),
        "size": all(
            p and (b.side >= SIZE_SPLIT) == (size == "large")
            for p, b, (size, _, _) in zip(present, found, scene.objects, strict=True)
        ),
        "shape": all(p and b.shape == shape for p, b, (_, _, shape) in zip(present, found, scene.objects, strict=True)),
        "extra": not any(
            b is not None and b.area >= MIN_AREA
            for c, b in blobs.items()
            if c not in {colour for _, colour, _ in scene.objects}
        ),
    }
    if scene.relation is None:
        out["relation"] = True
    else:
        a, b = found
        axis = "cy" if scene.relation in ("above", "below") else "cx"
        first_before = all(present) and getattr(a, axis) < getattr(b, axis)
        out["relation"] = first_before == (scene.relation in ("above", "to the left of")) and all(present)
    out["all"] = all(out.values())
    return out


def score(images: np.ndarray, captions: list[str]) -> dict[str, float]:
    """The share of images right on each aspect, and fully right ("all")."""
    verdicts = [check(image, caption) for image, caption in zip(images, captions, strict=True)]
    return {key: float(np.mean([v[key] for v in verdicts])) for key in verdicts[0]} if verdicts else {}


def all_single_object_captions() -> list[str]:
    """Every single-object caption of the grammar: 2 sizes x 6 colours x 3 shapes x 3 backgrounds = 108."""
    return [
        f"a {size} {colour} {shape} on a {background} background"
        for size in SIZES
        for colour in COLOURS
        for shape in SHAPES
        for background in BACKGROUNDS
    ]
