"""``WandbTracker``: a run's configuration, metrics, samples tables and summary in a
Weights & Biases run whose id is LightRFT's run id, so a resumed run continues it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from lightrft_core.interfaces import SamplesTable, TrackedRun, Tracker

MODES = ("online", "offline", "disabled")


@dataclass
class WandbOptions:
    project: str = field(default="lightrft", metadata={"help": "W&B project."})
    entity: str | None = field(
        default=None, metadata={"help": "W&B team or user (null: your default entity)."}
    )
    mode: str = field(
        default="online",
        metadata={"help": "online, offline (no network; 'wandb sync' uploads later), disabled."},
    )
    dir: str | None = field(
        default=None,
        metadata={"help": "Folder for W&B's local files (null: run.output_dir; W&B adds wandb/)."},
    )
    tags: list[str] = field(default_factory=list, metadata={"help": "Tags of the W&B run."})
    init_timeout_s: float = field(
        default=60.0, metadata={"help": "How long to wait for W&B to start the run."}
    )

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")


class WandbTracker(Tracker):
    """Logs to W&B; a samples table is a ``wandb.Table`` called ``rollouts``."""

    name: ClassVar[str] = "wandb"
    Config: ClassVar[type] = WandbOptions

    def __init__(self, config: WandbOptions | None = None) -> None:
        super().__init__(config)
        self.run: Any = None

    def start(self, run: TrackedRun) -> None:
        import wandb

        options: WandbOptions = self.config
        self.run = wandb.init(
            project=options.project,
            entity=options.entity,
            mode=options.mode,  # type: ignore[arg-type]
            dir=str(options.dir or run.output_dir),
            id=run.run_id,
            resume="allow",  # the same id continues the run W&B already has
            name=run.name,
            tags=options.tags or None,
            config=dict(run.config),
            settings=wandb.Settings(console="off", init_timeout=options.init_timeout_s),
        )

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        self.run.log(dict(metrics), step=step)

    def log_samples(self, step: int, table: SamplesTable) -> None:
        import wandb

        columns = list(table[0]) if table else []
        rows = [[row.get(column) for column in columns] for row in table]
        # wandb types columns as list[str | int] (invariant), so a list[str] needs the ignore
        table_ = wandb.Table(columns=columns, data=rows)  # type: ignore[arg-type]
        self.run.log({"rollouts": table_}, step=step)

    def log_summary(self, summary: Mapping[str, float]) -> None:
        self.run.summary.update(dict(summary))

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
