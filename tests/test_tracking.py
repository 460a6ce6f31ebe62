"""Every experiment the project creates opens in MLflow's model-training view, not the GenAI one."""

import mlflow

from common.tracking import EXPERIMENT_KIND, ensure_experiment


def test_experiments_are_tagged_as_model_training(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    new = ensure_experiment("train_prior")
    assert ensure_experiment("train_prior") == new
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    old = mlflow.create_experiment("made_by_an_older_version")  # untagged, as before this change
    assert ensure_experiment("made_by_an_older_version") == old
    for experiment_id in (new, old):
        tags = mlflow.get_experiment(experiment_id).tags
        assert {k: tags.get(k) for k in EXPERIMENT_KIND} == EXPERIMENT_KIND
