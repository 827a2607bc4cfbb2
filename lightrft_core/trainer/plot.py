"""``lightrft plot RUN_DIR [RUN_DIR ...]``: reward and accuracy curves of runs, as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    output = Path(output) if output is not None else Path(run_dir) / "curves.png"
    return plot_runs([run_dir], output)


def plot_runs(run_dirs: list[str | Path] | list[Path], output: str | Path) -> Path:
    """Draw the curves of several runs on one figure (one colour per run, the line style
    telling train from held-out) to ``output``; returns the PNG path. Raises ``ValueError``
    when a run has nothing to plot, naming it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(Path(run_dir), read_metrics(run_dir)) for run_dir in run_dirs]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    several = len(runs) > 1
    for index, (run_dir, records) in enumerate(runs):
        drawn = 0
        for ax, curves in ((axes[0], REWARD_CURVES), (axes[1], ACCURACY_CURVES)):
            for style, (key, label) in zip(("-", "--"), curves, strict=True):
                points = [
                    (r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))
                ]
                if not points:
                    continue
                drawn += 1
                steps, values = zip(*points, strict=True)
                name = f"{run_dir.name}: {label}" if several else label
                colour = colours[index % len(colours)] if several else None
                _draw_curve(ax, list(steps), list(values), name, style, colour)
        if drawn == 0:
            plt.close(fig)
            raise ValueError(f"{run_dir}: metrics.jsonl has no reward or accuracy values to plot")
    for ax, title in ((axes[0], "Reward"), (axes[1], "Accuracy")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    fig.suptitle(" vs ".join(run_dir.name for run_dir, _ in runs))
    fig.tight_layout()
    output = Path(output)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output


def _draw_curve(
    ax: Any, steps: list[int], values: list[float], label: str, style: str, colour: str | None
) -> None:
    """Few points: markers. Many: the noisy values faint and a moving average on top."""
    if len(values) < 30:
        ax.plot(steps, values, style, marker="o", label=label, color=colour)
        return
    line = ax.plot(steps, values, style, alpha=0.3, color=colour)[0]
    window = max(5, len(values) // 15)
    ax.plot(
        steps,
        moving_average(values, window),
        style,
        color=line.get_color(),
        label=f"{label} (mean of {window})",
    )
