"""Matplotlib plots as Markdown metadata (inline PNG), which the Dagster UI renders on the asset page."""

import base64
import functools
import io

import numpy as np


@functools.cache
def pyplot():
    """matplotlib's pyplot on the Agg backend, imported on first use (it costs ~0.4 s at every start otherwise)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot


def png_markdown(figure, alt: str) -> str:
    """The figure as a Markdown image with an inline base64 PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    pyplot().close(figure)
    return f"![{alt}](data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()})"


def variance_plot(curve: list[float], k: int, target: float | None) -> str:
    """Cumulative explained variance against k, with the chosen k (and the target) marked."""
    figure, axes = pyplot().subplots(figsize=(6, 3.5))
    axes.plot(range(1, len(curve) + 1), curve, color="tab:blue")
    axes.axvline(k, color="tab:red", linestyle="--", label=f"k = {k} ({curve[k - 1]:.3f})")
    if target is not None:
        axes.axhline(target, color="gray", linestyle=":", label=f"target {target:.2f}")
    axes.set(xlabel="components k", ylabel="cumulative explained variance", ylim=(0, 1.01), xscale="log")
    axes.legend(loc="lower right")
    return png_markdown(figure, "cumulative explained variance")


def scatter_plot(points: np.ndarray, labels: list[str]) -> str:
    """The first two PCA components of a sample of images, one colour per class (legend up to 20 classes)."""
    classes = sorted(set(labels))
    few = len(classes) <= 20
    palette = pyplot().get_cmap("tab20" if few else "hsv")
    figure, axes = pyplot().subplots(figsize=(6, 5))
    for i, label in enumerate(classes):
        chosen = np.array([lab == label for lab in labels])
        colour = palette(i if few else i / len(classes))
        axes.scatter(points[chosen, 0], points[chosen, 1], s=6, color=colour, label=label, alpha=0.7)
    axes.set(xlabel="PC 1", ylabel="PC 2", title=f"{len(labels)} images, {len(classes)} classes")
    if few:
        axes.legend(fontsize=7, markerscale=2, loc="best")
    return png_markdown(figure, "PCA scatter")


def accuracy_plot(accuracy: dict[int, float], k: int) -> str:
    """Classifier validation accuracy against k, with the chosen k marked."""
    ks = sorted(accuracy)
    figure, axes = pyplot().subplots(figsize=(6, 3.5))
    axes.plot(ks, [accuracy[key] for key in ks], marker="o", color="tab:blue")
    axes.axvline(k, color="tab:red", linestyle="--", label=f"k = {k} ({accuracy.get(k, float('nan')):.4f})")
    axes.set(xlabel="components k", ylabel="validation accuracy", xscale="log")
    axes.legend(loc="lower right")
    return png_markdown(figure, "accuracy against k")
