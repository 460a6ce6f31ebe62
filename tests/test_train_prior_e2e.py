"""End to end on real Ray (private local instance), real MLflow (sqlite in tmp), real gloo DDP:
2 workers train the tiny prior from synthetic token shards with PowerSGD; one worker is killed
at step 12; the group restarts from the step-8 checkpoint. Then the same command is rerun: it
resumes from the final checkpoint and reopens the same MLflow run. One run serves several tests to keep
the suite inside its time budget."""

import json
import math
import os
from collections import defaultdict

import pytest
import torch

from common.config import parse_cli
from training.config import PriorTrainConfig
from training.synthetic import write_synthetic_tokens

STEPS, FAIL_AT, CKPT_EVERY = 24, 12, 8
pytestmark = pytest.mark.slow


def config(tmp, max_steps):
    return parse_cli(
        PriorTrainConfig,
        [
            "--config",
            "configs/prior_tiny.toml",
            "--data.tokens",
            str(tmp / "tokens"),
            # 4 logical CPUs on a 2-core box: the two workers take 0.5 each and Ray Data's read tasks
            # must never wait behind them (a Ray Data read starved of CPU slots stalls the run).
            "--run.storage_path",
            str(tmp / "ray"),
            "--run.num_cpus",
            "4",
            "--run.log_every",
            "4",
            "--train.max_steps",
            str(max_steps),
            "--train.checkpoint_every",
            str(CKPT_EVERY),
            "--train.val_every",
            "12",
            "--train.fail_at_step",
            str(FAIL_AT),
            "--train.trace_batches",
            str(tmp / "trace.jsonl"),
            "--optim.powersgd",
            "true",
            "--optim.powersgd_rank",
            "1",
            "--optim.powersgd_start_iter",
            "2",
        ],
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mlflow_store_module, ray_cluster):
    from training.driver import train

    # The session's private Ray, with this module's own settings: 4 logical CPUs (see config()) and the
    # environment train() would start it with. Another module's 2-CPU instance is replaced, not reused.
    ray_cluster.start(num_cpus=4, env={"RAY_DATA_DISABLE_PROGRESS_BARS": "1"})
    tmp = tmp_path_factory.mktemp("prior_e2e")
    write_synthetic_tokens(str(tmp / "tokens"), n_shards=4, rows_per_shard=128)
    first = train(config(tmp, STEPS))
    second = train(config(tmp, STEPS))  # the same command again: resumes at the end, trains no more
    yield tmp, first, second


def mlflow_client():
    from mlflow import MlflowClient

    return MlflowClient()  # mlflow_store_module's store, which the runs fixture wrote to


def history(run_id, key):
    return [(m.step, m.value) for m in mlflow_client().get_metric_history(run_id, key)]


def test_loss_falls(runs):
    tmp, first, _ = runs
    loss = dict(history(first.run_id, "loss"))
    val = dict(history(first.run_id, "val_loss"))
    assert loss[4] > 1.3 * loss[STEPS], loss
    assert val[STEPS] < val[12] < 7 / 8 * math.log(16) + 1 / 8 * math.log(300 + 8)


def test_killed_worker_resumes_from_checkpoint_and_skips_ahead_exactly(runs):
    tmp, first, _ = runs
    assert (tmp / "ray" / "prior-tiny" / "injected_failure").exists()
    seen = defaultdict(list)  # (step, rank) -> [(pid, keys)] over attempts
    for line in open(tmp / "trace.jsonl"):
        r = json.loads(line)
        seen[(r["step"], r["rank"])].append((r["pid"], r["keys"]))
    for rank in (0, 1):
        # steps up to the checkpoint ran once; the ones after it (up to the kill) ran twice
        assert all(len(seen[(s, rank)]) == 1 for s in range(1, CKPT_EVERY + 1))
        for s in range(CKPT_EVERY + 1, FAIL_AT + 1):
            (pid_a, keys_a), (pid_b, keys_b) = seen[(s, rank)]
            assert pid_a != pid_b  # a new worker process after the restart...
            assert keys_a == keys_b  # ...trained on exactly the same rows (skip-ahead)
        assert all(len(seen[(s, rank)]) == 1 for s in range(FAIL_AT + 1, STEPS + 1))
    # and the restarted worker began at the checkpoint's step + 1, not at step 1
    restarted_pid = seen[(CKPT_EVERY + 1, 1)][1][0]
    assert min(s for (s, r), v in seen.items() if r == 1 and any(p == restarted_pid for p, _ in v)) == CKPT_EVERY + 1
    # shards are dealt to ranks by file: rank 1 only ever reads shard 1
    assert {k[:4] for (s, r), v in seen.items() if r == 1 for _, keys in v for k in keys} == {"s001"}


def test_checkpoint_holds_full_state_and_powersgd_on_gloo(runs):
    tmp, first, _ = runs
    ckpts = sorted(p for p in (tmp / "ray" / "prior-tiny").iterdir() if p.is_dir() and p.name.startswith("checkpoint_"))
    assert 1 <= len(ckpts) <= 2  # num_to_keep = 2
    shared = torch.load(os.path.join(first.checkpoint_path, "state.pt"), weights_only=True)
    assert shared["step"] == STEPS
    assert {"model", "optimizer", "schedule", "ema", "shape"} <= set(shared)
    assert shared["schedule"]["step_num"] == STEPS
    for rank in (0, 1):
        mine = torch.load(os.path.join(first.checkpoint_path, f"rank-{rank}.pt"), weights_only=True)
        assert mine["data"]["consumed"] + mine["data"]["epoch"] * 16 == STEPS  # 128 rows / 8 per batch
        psgd = mine["powersgd"]
        assert psgd["iter"] > 2 and psgd["matrix_approximation_rank"] == 1
        assert psgd["error_dict"] and all(torch.isfinite(e).all() for e in psgd["error_dict"].values())


def test_mlflow_run_contents(runs):
    tmp, first, second = runs
    client = mlflow_client()
    exp = client.get_experiment_by_name("train_prior")
    all_runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in all_runs] == [first.run_id]  # one run, reopened by the rerun
    run = all_runs[0]
    assert run.info.status == "FINISHED"
    for key in (
        "loss",
        "loss_text",
        "loss_image",
        "lr",
        "grad_norm",
        "text_truncated_share",
        "tokens_per_s",
        "data_wait_share",
        "mfu",
        "val_loss",
        "val_loss_text",
        "val_loss_image",
    ):
        assert key in run.data.metrics, key
    assert 0 <= run.data.metrics["data_wait_share"] < 1 and run.data.metrics["tokens_per_s"] > 0
    assert 0 <= run.data.metrics["text_truncated_share"] <= 1
    assert run.data.params["optim.powersgd"] == "True" and run.data.params["shape.grid_h"] == "4"
    tags = run.data.tags
    assert tags["dvae_sha256"] == "synthetic" and len(tags["tokens_manifest_sha256"]) == 64
    assert tags["final_checkpoint"] == second.checkpoint_path and tags["resumes"] == "1"
    images = [a.path for a in client.list_artifacts(first.run_id, "images")]  # mlflow.log_image(key, step)
    assert any(p.startswith(f"images/samples+step+{STEPS}+") and p.endswith(".png") for p in images), images
    # Lineage and registry: the token set is the run's training input; the EMA prior is a registered version.
    inputs = client.get_run(first.run_id).inputs.dataset_inputs
    assert [{t.key: t.value for t in i.tags}["mlflow.data.context"] for i in inputs] == ["training"]
    versions = client.search_model_versions("name = 'dalle-prior'")
    assert first.run_id in {v.run_id for v in versions}
    assert any(a.path.endswith("state.pt") for a in client.list_artifacts(first.run_id, "final_checkpoint"))


def test_rerun_resumes_same_run(runs):
    tmp, first, second = runs
    assert not first.resumed and second.resumed and second.run_id == first.run_id
    assert second.checkpoint_path == first.checkpoint_path  # restored, nothing trained twice
    steps = [s for s, _ in history(first.run_id, "loss")]
    assert steps[-1] == STEPS and steps.count(STEPS) == 1


def test_sample_cli_on_the_trained_checkpoint(runs, tmp_path):
    from PIL import Image

    from orchestration.sample_prior import main

    _, _, second = runs
    out = tmp_path / "grid.png"
    main(
        [
            "--checkpoint",
            second.checkpoint_path,
            "--prompt",
            "a red square",
            "--n",
            "3",
            "--out",
            str(out),
            "--top-k",
            "4",
        ]
    )
    assert Image.open(out).size == (3 * (4 * 8 + 2) + 2, 4 * 8 + 4)  # 3 token maps of 4x4 cells of 8 px
