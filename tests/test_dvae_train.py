"""dVAE training: the small preset learns (in-process), and the Ray Train run logs, checkpoints and resumes."""

import json
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from harness import HarnessConfig
from tokenize_images.codebook_init import init_codebook_from_data
from tokenize_images.config import CodebookConfig, DVAEModelConfig, DVAEOptimConfig, DVAETrainConfig, ScheduleConfig
from tokenize_images.dvae import DVAE, load_checkpoint, preset
from tokenize_images.dvae_training import make_optimizer, model_input, random_subcrop, train_dvae, train_step
from tokenize_images.preprocess import load_image
from tokenize_images.synthetic import jpeg, shape_image, write_dataset


@pytest.mark.slow  # trains 25 steps: ~5 s on 2 cores
def test_small_preset_loss_falls():
    torch.set_num_threads(2)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cfg = DVAETrainConfig(optim=DVAEOptimConfig(batch_size=8), schedule=ScheduleConfig(lr_start=1e-3, lr_end=1e-3))
    model = DVAE(preset("small"))
    pixels = torch.from_numpy(np.stack([load_image(jpeg(shape_image(rng, 80, 72)[0]), 64) for _ in range(8)]))
    opt = make_optimizer(model, cfg)
    losses = [train_step(model, opt, pixels, step, cfg)["loss"] for step in range(25)]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:3]), losses


COLOURS = [
    (220, 30, 30),
    (30, 180, 40),
    (40, 60, 220),
    (240, 220, 30),
    (160, 40, 200),
    (250, 140, 20),
    (255, 255, 255),
    (0, 0, 0),
]


def test_kmeans_codebook_init_separates_flat_colours():
    """At init the encoder gives flat colours shared codes (what collapses the demo dVAE's colours);
    after the k-means init each colour's most common code is its own."""
    torch.manual_seed(0)
    model = DVAE(preset("small", vocab_size=32, image_size=32))
    pixels = torch.tensor(COLOURS, dtype=torch.uint8)[:, None, None, :].expand(-1, 32, 32, -1).repeat(2, 1, 1, 1)
    x = model_input(pixels)

    def main_code_per_colour() -> list[int]:
        tokens = model.encoder(x).argmax(1).reshape(2, len(COLOURS), -1).transpose(0, 1).flatten(1)
        return [int(t.mode().values) for t in tokens]

    assert len(set(main_code_per_colour())) < len(COLOURS)  # colours share codes at init
    figures = init_codebook_from_data(model.encoder, x, margin=5.0)
    assert len(set(main_code_per_colour())) == len(COLOURS), main_code_per_colour()
    assert figures["kmeans_codes_used"] >= len(COLOURS) and figures["kmeans_scale"] > 0


def test_frozen_encoder_and_code_embedding_lr():
    """encoder_frozen_steps: the encoder does not move while the decoder does; then it trains.
    code_embedding_lr_mult scales the decoder input conv's learning rate only."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cfg = DVAETrainConfig(
        schedule=ScheduleConfig(lr_start=1e-3, lr_end=1e-3),
        codebook=CodebookConfig(encoder_frozen_steps=2, code_embedding_lr_mult=10.0),
    )
    model = DVAE(preset("small", vocab_size=32, image_size=32))
    pixels = torch.from_numpy(np.stack([load_image(jpeg(shape_image(rng, 40, 40)[0]), 32) for _ in range(4)]))
    opt = make_optimizer(model, cfg)

    def snapshot(module):
        return [p.detach().clone() for p in module.parameters()]

    def changed(module, before):
        return any(not torch.equal(p, q) for p, q in zip(module.parameters(), before, strict=True))

    encoder, decoder = snapshot(model.encoder), snapshot(model.decoder)
    for step in range(2):
        train_step(model, opt, pixels, step, cfg)
    assert not changed(model.encoder, encoder) and changed(model.decoder, decoder)
    assert not any(p in opt.state for p in model.encoder.parameters())  # its Adam moments start when released
    assert {g["name"]: g["lr"] for g in opt.param_groups} == {"encoder": 1e-3, "code_embeddings": 1e-2, "decoder": 1e-3}
    train_step(model, opt, pixels, 2, cfg)
    assert changed(model.encoder, encoder)


def test_subcrop_windows_sit_on_the_token_grid(tmp_path):
    """train_crop: one window per batch, its corner a multiple of the grid, so the crop's codes are the image's."""
    pixels = torch.arange(2 * 16 * 16 * 3, dtype=torch.int32).reshape(2, 16, 16, 3)
    g = torch.Generator().manual_seed(0)
    corners = set()
    for _ in range(50):
        crop = random_subcrop(pixels, 8, 4, g)
        assert crop.shape == (2, 8, 8, 3)
        i, j = divmod(int(crop[0, 0, 0, 0]) // 3, 16)  # where the window starts in the first image
        assert i % 4 == 0 and j % 4 == 0 and torch.equal(crop, pixels[:, i : i + 8, j : j + 8])
        corners.add((i, j))
    assert corners == {(i, j) for i in (0, 4, 8) for j in (0, 4, 8)}
    assert random_subcrop(pixels, 0, 4, g) is pixels  # 0: whole images
    cfg = DVAETrainConfig(dataset=str(tmp_path), output=str(tmp_path / "d.pt"), train_crop=30,
                          model=DVAEModelConfig(preset="small", downsample=4))  # fmt: skip
    with pytest.raises(ValueError, match="train_crop 30 must be a multiple of the dVAE's downsample"):
        train_dvae(cfg)


def ray_run(tmp_path, name: str, **overrides) -> HarnessConfig:
    """One worker on the session's Ray instance, logging every step, checkpoints under tmp_path/ray."""
    return HarnessConfig(name=name, storage_path=str(tmp_path / "ray"), experiment="train_dvae", num_workers=1,
                         num_cpus=2, log_every=1, log_final_checkpoint=False, **overrides)  # fmt: skip


@pytest.mark.slow
def test_train_on_ray_logs_checkpoints_and_resumes(tmp_path, mlflow_store, shared_ray):
    # The session's Ray instance serves both training launches: train_dvae does not own it, so it
    # does not shut it down in between.
    dataset = str(tmp_path / "ds")
    write_dataset(dataset, shards=2, rows_per_shard=8, size_range=(40, 56), corrupt_rows=1)
    cfg = DVAETrainConfig(
        dataset=dataset,
        output=str(tmp_path / "dvae.pt"),
        checkpoint_every=3,
        image_every=3,
        activation_checkpointing=True,
        model=DVAEModelConfig(preset="small", n_hid=16, vocab_size=64, image_size=32),
        schedule=ScheduleConfig(scale=0.001),
        optim=DVAEOptimConfig(batch_size=4, max_steps=6),
        codebook=CodebookConfig(kmeans_margin=5.0, kmeans_images=8, encoder_frozen_steps=2),
        run=ray_run(tmp_path, "dvae-test", parallel="fsdp2", threads_per_worker=2),
    )  # the EMA must be built before FSDP2 wraps the model
    _train_resume_and_reuse(cfg)


def _keys_per_step(path: str) -> dict[int, list[str]]:
    records = [json.loads(line) for line in Path(path).read_text().splitlines()]
    assert len({r["step"] for r in records}) == len(records), "a step traced twice"
    return {r["step"]: r["keys"] for r in records}


def _train_resume_and_reuse(cfg):
    cfg.trace_batches = str(Path(cfg.output).with_suffix(".resumed.jsonl"))
    first = train_dvae(cfg)
    model, sha = load_checkpoint(first["checkpoint"])  # weights_only=True path
    assert sha == first["sha256"] and model.cfg.image_size == 32 and model.cfg.vocab_size == 64
    assert not first["resumed"]

    # Same run name, more steps: continues from step 6 in the same MLflow run.
    cfg.optim.max_steps = 9
    second = train_dvae(cfg)
    assert second["resumed"] and second["run_id"] == first["run_id"] and second["metrics"]["step"] == 9
    client = mlflow.tracking.MlflowClient()
    history = client.get_metric_history(first["run_id"], "loss")
    assert sorted(m.step for m in history) == list(range(1, 10))  # 1..6 then 7..9, no step twice
    for name in (
        "beta",
        "tau",
        "lr",
        "nll",
        "kl",
        "codebook_perplexity",
        "codebook_used_fraction",
        "images_per_s",
        "mfu",
    ):
        assert client.get_metric_history(first["run_id"], name), name
    # The k-means init ran once, on the fresh start (8 images x 16 positions for 64 codes), not on resume.
    assert [m.step for m in client.get_metric_history(first["run_id"], "kmeans_codes_used")] == [0]
    # run.threads_per_worker reached the worker (more threads than its one CPU slot: the demo's dVAE).
    assert {m.value for m in client.get_metric_history(first["run_id"], "torch_threads")} == {2.0}
    # The data position is checkpointed: the resumed run goes on counting epochs where the first one stopped.
    epochs = [m.value for m in sorted(client.get_metric_history(first["run_id"], "epoch"), key=lambda m: m.step)]
    assert epochs == sorted(epochs) and epochs[-1] >= 3, epochs
    taus = [m.value for m in sorted(client.get_metric_history(first["run_id"], "tau"), key=lambda m: m.step)]
    assert taus[0] > taus[-1]  # scaled schedule: tau anneals within 9 steps
    grids = {a.path.split("+")[2] for a in client.list_artifacts(first["run_id"], "images")
             if a.path.startswith("images/reconstructions+step+") and a.path.endswith(".png")}  # fmt: skip
    assert {"3", "9"} <= grids  # mlflow.log_image with its step: the UI's image slider
    # Lineage and registry: the dataset is the run's training input; the exported dVAE a registered version.
    inputs = client.get_run(first["run_id"]).inputs.dataset_inputs
    assert [{t.key: t.value for t in i.tags}["mlflow.data.context"] for i in inputs] == ["training"]
    assert first["run_id"] in {v.run_id for v in client.search_model_versions("name = 'dalle-dvae'")}
    assert second["sha256"] != first["sha256"]

    # The resumed run trained on the same images, in the same order, as one run of 9 steps does: the data
    # position (epoch, batches taken) was checkpointed and the per-epoch order rebuilt from (seed, epoch).
    straight = replace(cfg, output=str(Path(cfg.output).with_suffix(".straight.pt")),
                       trace_batches=str(Path(cfg.output).with_suffix(".straight.jsonl")),
                       run=replace(cfg.run, name=cfg.run.name + "-straight"))  # fmt: skip
    train_dvae(straight)
    resumed_keys, straight_keys = (_keys_per_step(c.trace_batches) for c in (cfg, straight))
    assert sorted(resumed_keys) == list(range(1, 10)) and resumed_keys == straight_keys
    epochs = {r["epoch"] for r in map(json.loads, Path(cfg.trace_batches).read_text().splitlines())}
    assert len(epochs) >= 3  # the 9 steps span epochs, so the epoch order and its seeding are exercised

    # reuse=True: the demo's cache, no training.
    cfg.reuse = True
    assert train_dvae(cfg) == {"checkpoint": cfg.output, "sha256": second["sha256"], "reused": True}


@pytest.mark.slow
def test_patch_teacher_on_ray_resumes_with_its_centres(tmp_path, mlflow_store, shared_ray):
    """codebook.teacher_steps on Ray Train: the teacher is fitted once, on the fresh start; a resume inside the
    taught updates continues with the checkpoint's centres (not a refit on other images), and the paper's ELBO
    takes over at teacher_steps."""
    dataset = str(tmp_path / "ds")
    write_dataset(dataset, shards=2, rows_per_shard=8, size_range=(40, 56))
    cfg = DVAETrainConfig(
        dataset=dataset,
        output=str(tmp_path / "dvae.pt"),
        checkpoint_every=2,
        image_every=100,
        model=DVAEModelConfig(preset="small", n_hid=16, vocab_size=32, image_size=32, downsample=4),
        optim=DVAEOptimConfig(batch_size=4, max_steps=3),
        codebook=CodebookConfig(teacher_steps=4, kmeans_images=8),
        run=ray_run(tmp_path, "dvae-teacher"),
    )
    checkpoints = tmp_path / "ray" / "dvae-teacher"

    def centres() -> list[torch.Tensor]:
        states = sorted(checkpoints.glob("checkpoint_*/state.pt"))
        return [torch.load(p, weights_only=True)["patch_teacher"]["centres"] for p in states]

    first = train_dvae(cfg)
    fitted = centres()[-1]
    assert fitted.shape == (32, 3 * 4 * 4)
    cfg.optim.max_steps = 6
    second = train_dvae(cfg)
    assert second["resumed"] and second["run_id"] == first["run_id"]
    resumed = centres()  # the resumed run's checkpoints (steps 4 and 6) hold the first run's centres
    assert resumed and all(torch.equal(c, fitted) for c in resumed)
    client = mlflow.tracking.MlflowClient()

    def steps(name: str) -> list[int]:
        return sorted(m.step for m in client.get_metric_history(first["run_id"], name))

    assert steps("teacher_codes_used") == [0]  # fitted once, not again on resume
    assert steps("teacher_ce") == [1, 2, 3, 4] and steps("teacher_accuracy") == [1, 2, 3, 4]
    assert steps("kl") == [5, 6] and steps("tau") == [5, 6]
