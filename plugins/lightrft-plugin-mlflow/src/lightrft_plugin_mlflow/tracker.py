"""``MlflowTracker``: a run's configuration as params, metrics per step, samples tables and
the summary as artifacts, in an MLflow run tagged with LightRFT's run id (a resumed run
finds that run by the tag and appends to it)."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from lightrft_core.interfaces import SamplesTable, TrackedRun, Tracker

#: The tag that holds LightRFT's run id (kept across resumes).
RUN_ID_TAG = "lightrft.run_id"
#: MLflow's limits: characters of a param value, params per ``log_batch``.
MAX_PARAM_LENGTH = 6000
PARAMS_PER_BATCH = 100
_NOT_IN_KEY = re.compile(r"[^\w\-./ ]")


@dataclass
class MlflowOptions:
    tracking_uri: str | None = field(
        default=None,
        metadata={
            "help": "MLflow tracking store (http://..., sqlite:///..., file:/...); null: "
            "$MLFLOW_TRACKING_URI, else the folder store file:<run.output_dir>/mlruns."
        },
    )
    experiment: str = field(default="lightrft", metadata={"help": "MLflow experiment name."})


class MlflowTracker(Tracker):
    """Logs to MLflow through ``MlflowClient`` (no global active run)."""

    name: ClassVar[str] = "mlflow"
    Config: ClassVar[type] = MlflowOptions

    def __init__(self, config: MlflowOptions | None = None) -> None:
        super().__init__(config)
        self.client: Any = None
        self.run_id = ""

    def start(self, run: TrackedRun) -> None:
        options: MlflowOptions = self.config
        uri = tracking_uri(options, run.output_dir)
        if uri.startswith("file:"):
            # MLflow 3 refuses its folder store unless asked; a folder is what we were given
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(options.experiment)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self.client.create_experiment(options.experiment)
        )
        found = self.client.search_runs(
            [experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{run.run_id}'", max_results=1
        )
        if found:  # a resumed run: the same MLflow run, params it already has are kept
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            logged = set(found[0].data.params)
        else:
            created = self.client.create_run(
                experiment_id, run_name=run.name, tags={RUN_ID_TAG: run.run_id}
            )
            self.run_id, logged = created.info.run_id, set()
        params = [Param(k, param_value(v)) for k, v in run.config.items() if k not in logged]
        for first in range(0, len(params), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[first : first + PARAMS_PER_BATCH])

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(metric_key(k), float(v), now, step)
            for k, v in metrics.items()
            if isinstance(v, (int, float))
        ]
        self.client.log_batch(self.run_id, metrics=batch)

    def log_samples(self, step: int, table: SamplesTable) -> None:
        text = json.dumps([dict(row) for row in table], indent=1)
        self.client.log_text(self.run_id, text, f"rollouts/step_{step:06d}.json")

    def log_summary(self, summary: Mapping[str, float]) -> None:
        self.client.log_dict(self.run_id, dict(summary), "summary.json")

    def close(self) -> None:
        if self.run_id:
            self.client.set_terminated(self.run_id)
            self.run_id = ""


def tracking_uri(options: MlflowOptions, output_dir: Path) -> str:
    """The store this run logs to (see ``MlflowOptions.tracking_uri``)."""
    if options.tracking_uri:
        return options.tracking_uri
    return os.environ.get("MLFLOW_TRACKING_URI") or (Path(output_dir) / "mlruns").as_uri()


def param_value(value: Any) -> str:
    """A config value as an MLflow param: strings as they are, the rest as JSON, cut to
    MLflow's limit."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:MAX_PARAM_LENGTH]


def metric_key(key: str) -> str:
    """``key`` with the characters MLflow refuses in a metric name replaced by ``_``."""
    return _NOT_IN_KEY.sub("_", key)
