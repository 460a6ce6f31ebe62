"""MLflow helper shared by every stage.

Where runs go: `MLFLOW_TRACKING_URI` when set; otherwise `sqlite:///<cwd>/mlflow.db`, with artifacts
in `mlartifacts/` beside the database. `ui_command()` prints the `mlflow ui` line that opens it.

The sqlite database is created (and migrated) once by `ensure_experiment()` in the driver, before
any worker might write: concurrent first-time creation of a sqlite store races on its migrations.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

DEFAULT_DB = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
# MLflow 3 opens an experiment in its GenAI view ("Evaluation runs") unless it is tagged as model
# training: every experiment of this project is, so the UI shows metric charts and images.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{os.path.abspath(DEFAULT_DB)}"


def artifact_root(uri: str | None = None) -> str | None:
    """Local artifact folder beside a sqlite store; None lets a tracking server decide."""
    uri = uri or tracking_uri()
    if uri.startswith("sqlite:///"):
        db_path = uri[len("sqlite:///") :]
        return "file://" + os.path.join(os.path.dirname(os.path.abspath(db_path)), ARTIFACT_DIR)
    if uri.startswith("file:") or "://" not in uri:
        return None
    return None


# MLflow 3.17's UI keeps a global GenAI / Model training switch of its own (browser local storage, GenAI in a
# fresh browser), which wins over the experiments' `mlflow.experimentKind` tag; the `workflowType` query
# parameter sets it, so the printed address opens the model-training view (runs, charts, datasets).
UI_URL = "http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"


def ui_command(uri: str | None = None) -> str:
    uri = uri or tracking_uri()
    root = artifact_root(uri)
    cmd = f"mlflow ui --backend-store-uri {uri}"
    if root:
        cmd += f" --default-artifact-root {root}"
    return cmd + f" --port 5000   # then open {UI_URL}"


def ensure_experiment(name: str) -> str:
    """Point MLflow at the store, create the experiment if needed (tagged as model training, also when
    an older run created it untagged), return its id."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        root = artifact_root(uri)
        try:
            mlflow.create_experiment(name, artifact_location=f"{root}/{name}" if root else None, tags=EXPERIMENT_KIND)
        except Exception:
            if mlflow.get_experiment_by_name(name) is None:  # not a driver that created it in between
                raise
        exp = mlflow.get_experiment_by_name(name)
    for key, value in EXPERIMENT_KIND.items():
        if exp.tags.get(key) != value:
            mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


def find_run(experiment_id: str, run_name: str) -> str | None:
    """Id of the newest run with this name (resume reopens it rather than starting a second one)."""
    import mlflow

    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"attributes.run_name = '{run_name}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0].info.run_id if runs else None


def log_params(params: dict[str, Any], run_id: str | None = None) -> None:
    """Log a flat dict of params to `run_id` (default: the active run), stringifying values MLflow cannot
    take and skipping ones already set (a resumed run keeps its first values)."""
    import mlflow
    from mlflow.entities import Param

    run_id = run_id or mlflow.active_run().info.run_id
    client = mlflow.MlflowClient(tracking_uri())
    existing = client.get_run(run_id).data.params
    todo = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
    for i in range(0, len(todo), 90):  # MLflow caps a batch at 100 params
        client.log_batch(run_id, params=todo[i : i + 90])


def open_run(experiment: str, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> tuple[str, str, bool]:
    """Create the MLflow run named `run_name` (with MLflow's usual context tags: user, source), or reopen
    the newest one of that name, so that a rerun resumes it; then log `params` (first values kept) and
    `tags`. Returns (experiment id, run id, resumed). Client API only, no active run: safe on any thread,
    e.g. next to Ray's start-up, before the caller's mlflow.start_run(run_id=...)."""
    import mlflow
    from mlflow.entities import RunTag
    from mlflow.tracking.context.registry import resolve_tags

    experiment_id = ensure_experiment(experiment)  # also creates the sqlite DB once, before any worker writes
    client = mlflow.MlflowClient(tracking_uri())
    run_id = find_run(experiment_id, run_name)
    resumed = run_id is not None
    if resumed:
        client.update_run(run_id, status="RUNNING")
        previous = int(client.get_run(run_id).data.tags.get("resumes", "0"))
        client.set_tag(run_id, "resumes", str(previous + 1))
    else:
        run_id = client.create_run(experiment_id, run_name=run_name, tags=resolve_tags()).info.run_id
    log_params(params, run_id=run_id)
    if tags:
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    return experiment_id, run_id, resumed


def end_run(run_id: str, status: str) -> None:
    """End `run_id` with `status` ("FINISHED", "FAILED", "KILLED") from any thread, active or not."""
    import mlflow

    mlflow.MlflowClient(tracking_uri()).set_terminated(run_id, status)


def dataset_digest(root: str) -> str:
    """A dataset's (or token set's) identity: the sha256 of its manifest.json, which is written last and
    lists its config, versions and shards. Every stage that logs the same root logs the same digest, so
    MLflow links the run that wrote it to the runs that read it."""
    import hashlib

    from common import storage

    return hashlib.sha256(storage.read_bytes(storage.join(root, "manifest.json"))).hexdigest()[:16]


def log_dataset(run_id: str, uri: str, context: str, digest: str, name: str = "") -> None:
    """Log a dataset root (local or s3://) to run `run_id` as an MLflow dataset input. `context` is its
    role: "source", "training", "encode", or "output" for what the run wrote (MLflow runs have dataset
    inputs only, so the output is an input in the context "output"; its digest matches the next stage's)."""
    from mlflow import MlflowClient
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    name = name or uri.rstrip("/").rsplit("/", 1)[-1]
    with warnings.catch_warnings():
        # MLflow registers its local artifact source twice (schemes "" and "file"), as two classes both named
        # LocalArtifactDatasetSource: both match a local path, so it warns in every stage and then takes the
        # last, which is the same source either way.
        warnings.filterwarnings("ignore", "The specified dataset source can be interpreted in multiple ways")
        source = resolve_dataset_source(uri)
    dataset = MetaDataset(source, name=name, digest=digest)._to_mlflow_entity()
    tags = [InputTag(key="mlflow.data.context", value=context)]
    MlflowClient(tracking_uri()).log_inputs(run_id, datasets=[DatasetInput(dataset=dataset, tags=tags)])


def register_pytorch_model(model: Any, name: str, registered_name: str, run_id: str) -> str:
    """Log `model` to run `run_id` with MLflow's PyTorch flavour and register it as a new version of
    `registered_name` (the version is linked to its run). Returns the version."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    pytorch_log = logging.getLogger("mlflow.pytorch")
    level = pytorch_log.level
    pytorch_log.setLevel(logging.ERROR)  # its warning that pickle runs code on load: the format is chosen, below
    try:
        with mlflow.start_run(run_id=run_id):
            # "pickle": MLflow 3's default "pt2" traces forward with an input example, which neither the
            # prior (a sampler) nor the dVAE (two halves) fits. No requirement inference: it scans the environment.
            info = mlflow.pytorch.log_model(
                model,
                name=name,
                registered_model_name=registered_name,
                serialization_format="pickle",
                pip_requirements=["torch==2.13.0"],
            )
    finally:
        pytorch_log.setLevel(level)
    return str(info.registered_model_version)
