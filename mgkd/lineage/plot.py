"""The lineage's plot: two test scores and the parameter count by generation (matplotlib, off-screen)."""

from __future__ import annotations

from pathlib import Path


def lineage_plot(generations: list[dict[str, float]], path: Path, scores: list[tuple[str, str]],
                 controls: list[dict[str, float]] | None = None) -> Path:  # fmt: skip
    """Two test scores (`scores`: (metric, label), the task's plot metrics, e.g. BLEU and chrF) and the parameter
    count across generations, as a PNG; with `controls` (each with its "generation"), the controls' first score
    and each KD − control gap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [int(g["generation"]) for g in generations]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for (key, label), style in zip(scores, ("o-", "s--")):
        ax.plot(xs, [g[key] for g in generations], style, label=label)
    first, first_label = scores[0]
    by_gen = {int(g["generation"]): g for g in generations}
    paired = [c for c in controls or [] if first in c and int(c["generation"]) in by_gen]
    if paired:
        cx = [int(c["generation"]) for c in paired]
        ax.plot(cx, [c[first] for c in paired], "x:", color="black", label=f"{first_label}, control (no KD)")
        for c in paired:
            k = int(c["generation"])
            gap = by_gen[k][first] - c[first]
            ax.annotate(
                f"KD − control {gap:+.2f}",
                (k, by_gen[k][first]),
                textcoords="offset points",
                xytext=(0, 8),
                ha="center",
                fontsize=7,
            )
    ax.set_xlabel("generation (0 = teacher)")
    ax.set_ylabel("score")
    ax.set_xticks(xs)
    ax2 = ax.twinx()
    ax2.bar(xs, [g["parameters"] / 1e6 for g in generations], alpha=0.2, color="grey", label="parameters (M)")
    ax2.set_ylabel("parameters (M)")
    lines = ax.get_legend_handles_labels()
    bars = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + bars[0], lines[1] + bars[1], loc="lower right")
    ax.set_title("lineage: quality and size by generation")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
