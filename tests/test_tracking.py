"""Every experiment the project creates opens in MLflow's model-training view, not the GenAI one."""

import mlflow
import pytest

from common.tracking import EXPERIMENT_KIND, ensure_experiment


def test_experiments_are_tagged_as_model_training(mlflow_store):
    new = ensure_experiment("train_prior")
    assert ensure_experiment("train_prior") == new
    mlflow.set_tracking_uri(mlflow_store)
    old = mlflow.create_experiment("made_by_an_older_version")  # untagged, as before this change
    assert ensure_experiment("made_by_an_older_version") == old
    for experiment_id in (new, old):
        tags = mlflow.get_experiment(experiment_id).tags
        assert {k: tags.get(k) for k in EXPERIMENT_KIND} == EXPERIMENT_KIND


@pytest.mark.slow
def test_lineage_registry_and_images(tmp_path, mlflow_store):
    """Datasets are run inputs with a role and a digest, a model is registered with its run, and an
    image logged with a step lands where MLflow's image slider reads it."""
    import io
    import json

    import torch
    from PIL import Image

    from common.tracking import dataset_digest, log_dataset, register_pytorch_model
    from harness.logger import AsyncRunLogger

    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "manifest.json").write_text(json.dumps({"shards": ["a.parquet"]}))
    digest = dataset_digest(str(tmp_path / "ds"))
    experiment = ensure_experiment("lineage")
    with mlflow.start_run(experiment_id=experiment) as run:
        pass
    log_dataset(run.info.run_id, str(tmp_path / "ds"), "training", digest)
    version = register_pytorch_model(torch.nn.Linear(2, 2), "prior", "test-prior", run.info.run_id)

    inputs = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    assert [
        (i.dataset.name, i.dataset.digest, {t.key: t.value for t in i.tags}["mlflow.data.context"]) for i in inputs
    ] == [("ds", digest, "training")]
    registered = mlflow.MlflowClient().get_model_version("test-prior", version)
    assert registered.run_id == run.info.run_id

    logger = AsyncRunLogger(run.info.run_id, mlflow_store)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(buf, format="PNG")
    for step in (10, 20):
        logger.log_image(buf.getvalue(), "samples", step)
    logger.close()
    assert logger.errors == 0
    names = [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "images")]
    assert {n.split("+")[2] for n in names if n.startswith("images/samples+step+") and n.endswith(".png")} == {
        "10",
        "20",
    }


def test_ui_command_opens_the_model_training_view():
    """MLflow 3.17's UI starts in GenAI mode in a fresh browser whatever the experiment tag says; only the
    workflowType query parameter overrides it (checked in headless Chromium, docs/images/mlflow_training_view.png)."""
    from common.tracking import ui_command

    line = ui_command("sqlite:////tmp/x/mlflow.db")
    assert line.startswith("mlflow ui --backend-store-uri sqlite:////tmp/x/mlflow.db")
    assert "http://127.0.0.1:5000/#/experiments?workflowType=machine_learning" in line


def test_a_run_opened_on_another_thread_is_reopened_with_its_params(mlflow_store):
    """build_dataset opens its run and logs its params on a set-up thread while Ray starts; the main
    thread then makes it the active run. A resume reopens the same run and keeps the first params."""
    from concurrent.futures import ThreadPoolExecutor

    from common.tracking import open_run

    def set_up(params):
        experiment_id, run_id, _ = open_run("builds", "build-abc", params, {"stage": "build_dataset"})
        return experiment_id, run_id

    with ThreadPoolExecutor(1) as pool:
        experiment_id, run_id = pool.submit(set_up, {"run.shard_size": 1000, "flag": True}).result()
    with mlflow.start_run(run_id=run_id, experiment_id=experiment_id) as active:
        assert active.info.run_id == run_id
        mlflow.log_metric("kept", 3)
    with ThreadPoolExecutor(1) as pool:  # the same command again
        again = pool.submit(set_up, {"run.shard_size": 2000, "new": "x"}).result()
    assert again == (experiment_id, run_id)
    run = mlflow.get_run(run_id)
    assert run.data.params == {"run.shard_size": "1000", "flag": "True", "new": "x"}
    assert run.data.tags["stage"] == "build_dataset" and run.data.tags["mlflow.runName"] == "build-abc"
    assert "mlflow.user" in run.data.tags and "mlflow.source.name" in run.data.tags  # MLflow's context tags
    assert run.data.metrics == {"kept": 3.0}


def test_a_build_whose_ray_does_not_start_leaves_no_running_run(tmp_path, mlflow_store, monkeypatch):
    """The set-up thread opens the build's run while Ray starts; if Ray then fails, the run ends FAILED."""
    from common.config import parse_cli
    from orchestration.build_dataset import FLAGS
    from pipeline import build as build_module
    from pipeline.config import BuildConfig

    (tmp_path / "in.tsv").write_text("url\tcaption\nhttp://example.com/a.jpg\ta red circle on a white background\n")

    def no_ray(*args, **kwargs):
        raise RuntimeError("raylet did not start")

    monkeypatch.setattr(build_module, "init_ray", no_ray)
    cfg = parse_cli(BuildConfig, ["--source", f"tsv:{tmp_path}/in.tsv", "--output", str(tmp_path / "out")], flags=FLAGS)
    with pytest.raises(RuntimeError, match="raylet did not start"):
        build_module.build(cfg)
    runs = mlflow.search_runs(experiment_names=[cfg.run.experiment], output_format="list")
    assert [r.info.status for r in runs] == ["FAILED"]
    assert runs[0].data.tags["stage"] == "build_dataset"
