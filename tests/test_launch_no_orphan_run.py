"""harness.launch ends its MLflow run FAILED when TorchTrainer cannot even be constructed (here: an
invalid ScalingConfig), so no run is left RUNNING. Real Ray (private local instance), real MLflow
sqlite store in tmp."""

import pytest

from harness.config import HarnessConfig
from harness.launch import launch


def never_called(config):
    raise AssertionError("the trainer must not start")


@pytest.mark.slow
def test_run_ends_failed_when_the_trainer_constructor_raises(tmp_path, monkeypatch):
    import ray
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run = HarnessConfig(
        name="orphan-check",
        experiment="orphans",
        num_workers=-1,
        num_cpus=1,
        storage_path=str(tmp_path / "ray"),
        use_gpu="false",
    )
    started_here = not ray.is_initialized()
    try:
        with pytest.raises(ValueError, match="Number of workers cannot be negative"):
            launch(never_called, {}, run)
    finally:
        if started_here and ray.is_initialized():
            ray.shutdown()
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("orphans").experiment_id])
    assert [r.info.run_name for r in runs] == ["orphan-check"]
    assert runs[0].info.status == "FAILED"
