"""The demo's pixel classifier reads drawn scenes right, and a caption that differs in one word wrong."""

import random

import pytest

from pipeline.demo.scene_check import all_single_object_captions, check, parse_caption, score
from pipeline.demo.source import BACKGROUNDS, COLOURS, SHAPES, describe_and_draw, jpeg_bytes
from tokenize_images.preprocess import load_image


def scenes(n: int, seed: int, size: int = 80, layout: str = "lattice"):
    """Scenes as the demo's tokens see them (80 px: configs/dvae_demo.toml): JPEG, short side to `size`, centre crop."""
    rng = random.Random(seed)
    for _ in range(n):
        caption, image = describe_and_draw(rng, layout)
        yield caption, load_image(jpeg_bytes(image), size)


@pytest.mark.parametrize("size,layout", [(80, "lattice"), (64, "lattice"), (64, "free")])
def test_drawn_scenes_are_read_right(size, layout):
    captions, images = zip(*scenes(300, seed=7, size=size, layout=layout), strict=True)
    assert score(list(images), list(captions))["all"] >= 0.99


def swap(caption: str, rng: random.Random) -> tuple[str, str]:
    """The caption with one word changed: a colour, a shape, the size, the background or the relation."""
    scene = parse_caption(caption)
    size, colour, shape = scene.objects[0]
    aspect = rng.choice(["colour", "shape", "size", "background"] + (["relation"] * (scene.relation is not None)))
    if aspect == "colour":
        taken = {c for _, c, _ in scene.objects}
        return caption.replace(f" {colour} {shape}", f" {rng.choice(sorted(set(COLOURS) - taken))} {shape}", 1), aspect
    if aspect == "shape":
        return caption.replace(f"{colour} {shape}", f"{colour} {rng.choice(sorted(set(SHAPES) - {shape}))}", 1), aspect
    if aspect == "size":
        other = "large" if size == "small" else "small"
        return caption.replace(f"a {size} {colour}", f"a {other} {colour}", 1), aspect
    if aspect == "background":
        new = rng.choice(sorted(set(BACKGROUNDS) - {scene.background}))
        return caption.replace(f"on a {scene.background} background", f"on a {new} background"), aspect
    flipped = {
        "above": "below",
        "below": "above",
        "to the left of": "to the right of",
        "to the right of": "to the left of",
    }[scene.relation]
    return caption.replace(f" {scene.relation} ", f" {flipped} ", 1), aspect


def test_a_one_word_change_is_caught():
    rng = random.Random(1)
    caught = []
    for caption, image in scenes(200, seed=11):
        wrong, aspect = swap(caption, rng)
        verdict = check(image, wrong)
        caught.append(not verdict[aspect] and not verdict["all"])
    assert sum(caught) / len(caught) >= 0.97


def test_grammar():
    assert parse_caption("a small red circle above a large blue square on a gray background").relation == "above"
    assert len(all_single_object_captions()) == 2 * 6 * 3 * 3
    with pytest.raises(ValueError):
        parse_caption("a cat on a mat")


def test_demo_quality_captions_cover_the_grammar():
    """The prior is scored on every colour, shape, size and background, and on two-object captions."""
    from bench.demo_quality import prior_captions

    scenes = [parse_caption(c) for c in prior_captions()]
    singles = [s for s in scenes if s.relation is None]
    assert len(scenes) == 48 and len(singles) == 36
    assert {o for s in singles for o in s.objects} == {(z, c, h) for z in ("small", "large") for c in COLOURS
                                                       for h in SHAPES}  # fmt: skip
    assert {s.background for s in singles} == set(BACKGROUNDS)
