"""Rank 0's MLflow logger: a queue drained by a background thread, so logging never stalls a step.

Workers talk to MLflow through an MlflowClient pointed at the run the driver opened (never
mlflow.start_run: a worker must not create or end runs). Other ranks get a NullLogger with the
same methods. A failed MLflow call is counted and printed, never fatal to training.
"""

from __future__ import annotations

import os
import queue
import tempfile
import threading
import time
from typing import Any


class NullLogger:
    errors = 0

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_artifact_bytes(self, data: bytes, name: str, artifact_path: str | None = None) -> None:
        pass

    def log_image(self, png: bytes, key: str, step: int) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class AsyncRunLogger(NullLogger):
    def __init__(self, run_id: str, tracking_uri: str, max_queue: int = 10_000):
        from mlflow import MlflowClient

        self.run_id = run_id
        self.client = MlflowClient(tracking_uri)
        self.errors = 0
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._drain, name="mlflow-logger", daemon=True)
        self._thread.start()

    # -- producer side (training loop) ---------------------------------------------------------
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._put(("metrics", {k: float(v) for k, v in metrics.items()}, step, int(time.time() * 1000)))

    def log_artifact_bytes(self, data: bytes, name: str, artifact_path: str | None = None) -> None:
        self._put(("artifact", data, name, artifact_path))

    def log_image(self, png: bytes, key: str, step: int) -> None:
        """An image with its step (MLflow's image slider pages through the steps of one key)."""
        self._put(("image", png, key, step))

    def set_tags(self, tags: dict[str, str]) -> None:
        self._put(("tags", {k: str(v) for k, v in tags.items()}))

    def flush(self) -> None:
        self._queue.join()

    def close(self) -> None:
        self._queue.join()
        self._queue.put(None)
        self._thread.join(timeout=60)

    def _put(self, item: Any) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:  # MLflow is far behind: drop rather than stall training
            self.errors += 1

    # -- consumer side (background thread) -----------------------------------------------------
    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._send(item)
            except Exception as exc:  # noqa: BLE001 - logging must never kill training
                self.errors += 1
                print(f"[mlflow-logger] {type(exc).__name__}: {exc}", flush=True)
            finally:
                self._queue.task_done()

    def _send(self, item: tuple) -> None:
        from mlflow.entities import Metric, RunTag

        kind = item[0]
        if kind == "metrics":
            _, metrics, step, ts = item
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, ts, step) for k, v in metrics.items()])
        elif kind == "tags":
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in item[1].items()])
        elif kind == "image":
            import io

            from PIL import Image

            _, png, key, step = item
            with Image.open(io.BytesIO(png)) as image:
                self.client.log_image(self.run_id, image.convert("RGB"), key=key, step=step)
        elif kind == "artifact":
            _, data, name, artifact_path = item
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, name)
                with open(path, "wb") as fh:
                    fh.write(data)
                self.client.log_artifact(self.run_id, path, artifact_path)
