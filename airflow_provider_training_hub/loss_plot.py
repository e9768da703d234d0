"""``plot_loss``: training_hub's picture of one or more runs' loss curves, from their metrics files.

Its signature and defaults are training_hub's; the run's ``val_loss``, where it evaluated, is drawn
too (as points). matplotlib is imported only here, and only when a plot is asked for: it is not a
training dependency.
"""

from __future__ import annotations

from pathlib import Path

from airflow_provider_training_hub.checkpoints import METRICS_FILE, step_records

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def exponential_moving_average(values: list[float], span: int) -> list[float]:
    """pandas' ``ewm(span=span, adjust=False).mean()``, which training_hub draws."""
    alpha, smoothed = 2 / (span + 1), []
    for value in values:
        smoothed.append(value if not smoothed else alpha * value + (1 - alpha) * smoothed[-1])
    return smoothed


def plot_loss(
    ckpt_output_dirs: str | list[str],
    *,
    metrics_file: str | None = None,
    output_path: str | None = None,
    labels: list[str] | None = None,
    ema: bool = False,
    ema_span: int = 30,
    metric_keys: list[str] | None = None,
    show: bool = False,
) -> str:
    """Draw each run's loss by step (the first of ``metric_keys`` its metrics file has, default
    ``avg_loss``) and its ``val_loss``; save the picture to ``output_path`` (default:
    ``loss_plot.png`` in the first directory) and return that path."""
    try:
        import matplotlib

        if not show:
            matplotlib.use("Agg")  # a file only: no display needed (an Airflow worker, a pod)
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("plot_loss needs matplotlib: pip install matplotlib") from None
    dirs = [ckpt_output_dirs] if isinstance(ckpt_output_dirs, str) else list(ckpt_output_dirs)
    labels = labels or [Path(d).name for d in dirs]
    if len(labels) != len(dirs):
        raise ValueError(f"plot_loss: {len(labels)} labels for {len(dirs)} runs")
    figure, axes = plt.subplots(figsize=(10, 6))
    for i, (directory, label) in enumerate(zip(dirs, labels, strict=True)):
        metrics = Path(directory) / (metrics_file or METRICS_FILE)
        every = step_records(metrics)
        key = next((k for k in metric_keys or ["avg_loss"] if any(k in r for r in every)), None)
        records = [r for r in every if key in r] if key else []
        if not records:
            plt.close(figure)
            raise ValueError(f"plot_loss: {metrics} holds no {' or '.join(metric_keys or ['avg_loss'])} by step")
        color = COLORS[i % len(COLORS)]
        steps, losses = [r["step"] for r in records], [r[key] for r in records]
        axes.plot(steps, losses, label=f"{label} ({key})", color=color)
        if ema:
            axes.plot(steps, exponential_moving_average(losses, ema_span), label=f"{label} (EMA)", color=color,
                      linestyle="--", alpha=0.7)
        if evaluations := [r for r in every if "val_loss" in r]:
            axes.plot([r["step"] for r in evaluations], [r["val_loss"] for r in evaluations], "o:",
                      label=f"{label} (val_loss)", color=color)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.legend()
    output = output_path or str(Path(dirs[0]) / "loss_plot.png")
    figure.savefig(output, dpi=150, bbox_inches="tight")
    if show:
        plt.show()
    plt.close(figure)
    return output
