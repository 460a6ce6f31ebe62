"""Fields with a fixed set of values are Literals: every shipped TOML loads, a wrong choice stops the command
at parse time (before Ray or torch), and the code that dispatches on such a value refuses an unknown one
instead of falling through to a default branch."""

from __future__ import annotations

import dataclasses
import glob
import io
import os
import subprocess
import sys
import textwrap
import typing
from dataclasses import dataclass
from typing import Literal, Optional

import pytest

from common.config import _field_docs, choices, describe, doc, from_dict, parse_cli
from pipeline.config import BuildConfig
from tokenize_images.config import DVAETrainConfig, EncodeConfig
from training.config import PriorTrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every configs/*.toml and the dataclass its entry point loads it into (see each file's header comment).
# A new config file must be added here, so that a wrong choice in it is caught by this test, not a run.
CONFIG_CLASSES = {
    "demo.toml": BuildConfig,  # orchestration/build_dataset.py
    "laion.toml": BuildConfig,
    "dvae_demo.toml": DVAETrainConfig,  # dVAE training
    "dvae_openai.toml": DVAETrainConfig,
    "dvae_small.toml": DVAETrainConfig,
    "encode_demo.toml": EncodeConfig,  # orchestration/encode_tokens.py
    "encode_openai.toml": EncodeConfig,
    "prior_demo.toml": PriorTrainConfig,  # training/train_prior.py
    "prior_tiny.toml": PriorTrainConfig,
}
ALL_CLASSES = (BuildConfig, DVAETrainConfig, EncodeConfig, PriorTrainConfig)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.toml"))), ids=os.path.basename)
def test_every_shipped_config_loads(path):
    name = os.path.basename(path)
    assert name in CONFIG_CLASSES, f"configs/{name} is not mapped to its dataclass in CONFIG_CLASSES"
    cfg = parse_cli(CONFIG_CLASSES[name], ["--config", path])
    assert isinstance(cfg, CONFIG_CLASSES[name])


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_literal_defaults_are_allowed_and_listed_in_help(cls):
    literal_fields = [(name, default, tp) for name, default, _, tp in _field_docs(cls) if choices(tp)]
    assert literal_fields or cls is BuildConfig  # every stage but the build has some
    for name, default, tp in literal_fields:
        assert default in choices(tp), f"{name}: default {default!r} not in {choices(tp)}"
        assert f"--{name} (one of {', '.join(map(repr, choices(tp)))}; default: {default!r})" in describe(cls)


# (config class, override, field, allowed values): the wrong values issue 9 names
REFUSALS = [
    (PriorTrainConfig, ["--run.parallel", "fsdp"], "run.parallel", "'ddp', 'fsdp2', 'none'"),
    (PriorTrainConfig, ["--model.attention", "Full"], "model.attention", "'sparse', 'full'"),
    (PriorTrainConfig, ["--model.attn_impl", "flash"], "model.attn_impl", "'auto', 'sdpa', 'flex'"),
    (PriorTrainConfig, ["--model.compile", "yes"], "model.compile", "'auto', 'true', 'false'"),
    (PriorTrainConfig, ["--model.preset", "13b"], "model.preset", "'tiny', 'demo', '1b', '12b'"),
    (EncodeConfig, ["--run.amp_dtype", "bf16"], "run.amp_dtype", "'auto', 'bfloat16', 'float16', 'float32'"),
    (EncodeConfig, ["--run.resample", "Lanczos3"], "run.resample", "'lanczos', 'bicubic', 'bilinear', 'box'"),
    (EncodeConfig, ["--run.device=gpu"], "run.device", "'auto', 'cuda', 'cpu'"),
    (DVAETrainConfig, ["--model.preset", "tiny"], "model.preset", "'openai', 'small'"),
    (DVAETrainConfig, ["--run.use_gpu", "maybe"], "run.use_gpu", "'auto', 'true', 'false'"),
]


@pytest.mark.parametrize("cls,argv,field,allowed", REFUSALS, ids=lambda v: v if isinstance(v, str) else None)
def test_wrong_choice_is_refused_by_parse_cli(cls, argv, field, allowed, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_cli(cls, argv)
    assert exc.value.code == 2  # argparse's usage error
    bad = argv[-1].partition("=")[2] or argv[-1]
    assert f"{field}: {bad!r} is not one of {allowed}" in capsys.readouterr().err


@pytest.mark.parametrize("cls", [PriorTrainConfig, DVAETrainConfig])
def test_negative_threads_per_worker_is_refused(cls, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_cli(cls, ["--run.threads_per_worker", "-1"])
    assert exc.value.code == 2
    assert "run.threads_per_worker must be >= 0 (0 = cpus_per_worker), got -1" in capsys.readouterr().err
    run = parse_cli(cls, ["--run.cpus_per_worker", "0.5"]).run
    assert run.cpu_threads() == 1  # 0: the worker's CPU slots, at least one thread
    assert parse_cli(cls, ["--run.cpus_per_worker", "0.5", "--run.threads_per_worker", "2"]).run.cpu_threads() == 2


def test_negative_threads_per_encoder_is_refused(capsys):
    with pytest.raises(SystemExit):
        parse_cli(EncodeConfig, ["--run.threads_per_encoder", "-2"])
    assert "run.threads_per_encoder must be >= 0 (0 = cpus_per_encoder), got -2" in capsys.readouterr().err


def test_wrong_choice_in_toml_is_refused(tmp_path, capsys):
    toml = tmp_path / "bad.toml"
    toml.write_text('[run]\nparallel = "FSDP2"\n')
    with pytest.raises(SystemExit):
        parse_cli(PriorTrainConfig, ["--config", str(toml)])
    assert "run.parallel: 'FSDP2' is not one of 'ddp', 'fsdp2', 'none'" in capsys.readouterr().err


@dataclass
class Inner:
    mode: Literal["a", "b"] = doc("a", "a string choice")


@dataclass
class Choices:
    size: Literal[8, 16] = doc(8, "an int choice")
    switch: Literal["auto", "true", "false"] = doc("auto", "a tri-state")
    maybe: Optional[Literal["x", "y"]] = doc(None, "an optional choice")
    modes: list[Literal["r", "w"]] = doc(["r"], "a list of choices")
    inner: Inner = doc(Inner, "a section")


def test_from_dict_coerces_literals():
    cfg = from_dict(Choices, {"size": "16", "switch": True, "maybe": "y", "modes": "r,w", "inner": {"mode": "b"}})
    assert (cfg.size, cfg.switch, cfg.maybe, cfg.modes, cfg.inner.mode) == (16, "true", "y", ["r", "w"], "b")
    assert from_dict(Choices, {"size": 16, "switch": "false", "maybe": "none"}).maybe is None
    assert from_dict(Choices, {"switch": False}).switch == "false"  # TOML `switch = false`
    for data, message in [
        ({"size": "12"}, "size: '12' is not one of 8, 16"),
        ({"size": True}, "size: True is not one of 8, 16"),  # True == 1, but it is not a size
        ({"switch": "True"}, "switch: 'True' is not one of 'auto', 'true', 'false'"),  # exact spelling
        ({"maybe": "z"}, "maybe: 'z' is not one of 'x', 'y'"),
        ({"modes": ["r", "rw"]}, "modes: 'rw' is not one of 'r', 'w'"),
        ({"inner": {"mode": "A"}}, "inner.mode: 'A' is not one of 'a', 'b'"),
    ]:
        with pytest.raises(ValueError) as exc:
            from_dict(Choices, data)
        assert str(exc.value) == message


def test_literals_match_what_the_code_dispatches_on():
    """The config's allowed values and the dispatch tables are written twice; they must not drift apart."""
    from harness.config import Parallel, UseGpu
    from tokenize_images.config import DVAEModelConfig, EncodeRunConfig
    from tokenize_images.dvae import PRESETS as DVAE_PRESETS
    from tokenize_images.encoder_actor import AMP_DTYPES
    from tokenize_images.preprocess import FILTERS
    from training.config import ModelConfig
    from training.model import ATTENTIONS, ATTN_IMPLS
    from training.presets import PRESETS

    def allowed(cls, name):
        return set(choices(typing.get_type_hints(cls)[name]))

    assert allowed(ModelConfig, "preset") == set(PRESETS)
    assert allowed(ModelConfig, "attention") == set(ATTENTIONS)
    assert allowed(ModelConfig, "attn_impl") == set(ATTN_IMPLS) | {"auto"}  # auto: resolved by the driver
    assert allowed(DVAEModelConfig, "preset") == set(DVAE_PRESETS)
    assert allowed(EncodeRunConfig, "amp_dtype") == set(AMP_DTYPES)
    assert allowed(EncodeRunConfig, "resample") == set(FILTERS)
    assert set(typing.get_args(Parallel)) == {"ddp", "fsdp2", "none"}
    assert set(typing.get_args(UseGpu)) == {"auto", "true", "false"}


# --- dispatch sites: a value that bypassed the config (dataclasses.replace, a direct call) is refused ---


def test_prepare_model_refuses_unknown_parallel():
    import torch

    from harness import WorkerContext, prepare_model

    ctx = WorkerContext(
        rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), parallel="none", log_every=0, run_id=""
    )
    assert isinstance(prepare_model(torch.nn.Linear(2, 2), ctx), torch.nn.Linear)
    with pytest.raises(ValueError, match="unknown parallel 'fsdp'; allowed: 'ddp', 'fsdp2', 'none'"):
        prepare_model(torch.nn.Linear(2, 2), dataclasses.replace(ctx, parallel="fsdp"))


def test_use_gpu_refuses_unknown_setting():
    from harness.launch import use_gpu

    assert use_gpu("true") is True and use_gpu("false") is False  # no Ray needed for these
    with pytest.raises(ValueError, match="unknown use_gpu 'maybe'"):
        use_gpu("maybe")


def test_prior_shape_refuses_unknown_attention_and_impl():
    from training.presets import preset

    shape = preset("tiny")
    with pytest.raises(ValueError, match="unknown attention 'Full'; allowed: 'sparse', 'full'"):
        dataclasses.replace(shape, attention="Full")
    with pytest.raises(ValueError, match="unknown attn_impl 'flash'; allowed: 'sdpa', 'flex'"):
        preset("tiny", attn_impl="flash")
    with pytest.raises(ValueError, match="unknown preset '13b'"):
        preset("13b")


def test_dvae_preset_refuses_unknown_name():
    from tokenize_images.dvae import preset

    with pytest.raises(ValueError, match="unknown dVAE preset 'tiny'; allowed: 'openai', 'small'"):
        preset("tiny")


def test_encoder_refuses_unknown_amp_dtype_even_on_cpu():
    from tokenize_images.encoder_actor import TokenEncoder

    # Refused before the checkpoint is read: the path does not exist, and that is not the error raised.
    with pytest.raises(ValueError, match="unknown amp_dtype 'bf16'"):
        TokenEncoder("/nonexistent/dvae.pt", device="cpu", amp_dtype="bf16")


def test_unknown_resample_is_a_config_error_not_a_per_row_reject():
    from PIL import Image

    from tokenize_images.preprocess import load_image, load_images

    buf = io.BytesIO()
    Image.new("RGB", (12, 10), "red").save(buf, format="PNG")
    pixels, errors = load_images([buf.getvalue()], 8, "box")
    assert errors == [""] and pixels[0, 4, 4].tolist() == [255, 0, 0]
    with pytest.raises(ValueError, match="unknown resample 'Lanczos3'"):
        load_images([buf.getvalue()], 8, "Lanczos3")  # would otherwise reject every row with a KeyError
    with pytest.raises(ValueError, match="unknown resample 'Lanczos3'"):
        load_image(buf.getvalue(), 8, "Lanczos3")


def test_encode_pool_refuses_unknown_device_before_ray():
    from tokenize_images.encode import _pool

    cfg = EncodeConfig()
    with pytest.raises(ValueError, match="unknown run.device 'mps'"):
        _pool(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, device="mps")))


# --- refused before any work ---


def test_config_refusal_needs_neither_torch_nor_ray():
    """Parsing and refusing a config imports only the config modules: no torch, no Ray."""
    code = textwrap.dedent("""
        import sys
        from common.config import parse_cli
        from training.config import PriorTrainConfig
        from tokenize_images.config import EncodeConfig
        try:
            parse_cli(PriorTrainConfig, ["--run.parallel", "fsdp"])
        except SystemExit as exc:
            assert exc.code == 2
        heavy = sorted(m for m in ("torch", "ray") if m in sys.modules)
        assert not heavy, heavy
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    assert "run.parallel: 'fsdp' is not one of 'ddp', 'fsdp2', 'none'" in out.stderr


def test_train_prior_script_exits_2_before_starting_ray(tmp_path):
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "training", "train_prior.py"), "--run.parallel", "fsdp"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert "run.parallel: 'fsdp' is not one of 'ddp', 'fsdp2', 'none'" in out.stderr
    assert "Ray" not in out.stderr and not os.listdir(tmp_path)  # no local Ray instance, no run folder
