"""``lightrft plot RUN_DIR``: reward and accuracy curves of a run, as a PNG."""

from __future__ import annotations

from pathlib import Path

from .metrics import read_metrics

#: (metric, label) pairs drawn on the two panels.
REWARD_CURVES = (("reward/mean", "train reward"), ("eval/reward", "held-out reward"))
ACCURACY_CURVES = (("accuracy", "train accuracy"), ("eval/accuracy", "held-out accuracy (greedy)"))


def moving_average(values: list[float] | tuple[float, ...], window: int) -> list[float]:
    """Trailing mean over up to ``window`` values (shorter at the start)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_run(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Draw the curves of ``run_dir/metrics.jsonl`` to ``output`` (default
    ``run_dir/curves.png``); returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    output = Path(output) if output is not None else Path(run_dir) / "curves.png"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    drawn = 0
    for ax, curves, title in (
        (axes[0], REWARD_CURVES, "Reward"),
        (axes[1], ACCURACY_CURVES, "Accuracy"),
    ):
        for key, label in curves:
            points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
            if not points:
                continue
            steps, values = zip(*points, strict=True)
            drawn += 1
            if len(points) < 30:
                ax.plot(steps, values, marker="o", label=label)
                continue
            line = ax.plot(steps, values, alpha=0.3)[0]  # noisy per-step values, faint
            window = max(5, len(points) // 15)
            ax.plot(
                steps,
                moving_average(values, window),
                color=line.get_color(),
                label=f"{label} (mean of {window})",
            )
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    if drawn == 0:
        plt.close(fig)
        raise ValueError(f"{run_dir}: metrics.jsonl has no reward or accuracy values to plot")
    fig.suptitle(Path(run_dir).name)
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output
