"""The table and the ROC plot of an OOD experiment (the ``pcdm ood`` command is pcdm/cli/ood.py)."""

from __future__ import annotations

from pathlib import Path

from .experiment import OODResult
from .select import DEFAULT_SCORE

# Scores drawn in the ROC plot when none are chosen: the paper's statistic, the raw
# likelihood, and the best of each family.
PLOT_DEFAULT = tuple(dict.fromkeys((DEFAULT_SCORE, "typ:nll", "nll", "nll-L", "typ:L", "joint")))


def plot_roc(result: OODResult, path: Path, title: str = "", scores: list[str] | None = None) -> None:
    """One panel per OOD set with the ROC curve of each score (Agg, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    chosen = [s for s in (scores or PLOT_DEFAULT) if s in result.score_names]
    sets = list(result.curves)
    cols = min(3, len(sets))
    rows = -(-len(sets) // cols)
    fig = Figure(figsize=(4.2 * cols, 4.0 * rows))
    FigureCanvasAgg(fig)
    for i, spec in enumerate(sets):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls=":")
        for j, s in enumerate(chosen):
            fpr, tpr = result.curves[spec][s]
            ax.plot(fpr, tpr, color=f"C{j % 10}", label=f"{s} ({result.auroc[s][spec]:.3f})")
        ax.set_title(f"{spec} (n = {result.n[spec]} per class)", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("false-positive rate", fontsize=8)
        ax.set_ylabel("true-positive rate", fontsize=8)
        ax.legend(fontsize=6, loc="lower right", title="score (AUROC)", title_fontsize=6)
    fig.suptitle(title or f"OOD vs {result.in_name}: score > threshold ⇒ OOD", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def format_table(result: OODResult) -> str:
    nll = result.in_features["nll"]
    sets = list(result.n)
    width = max(10, *(len(s) for s in sets))
    lines = [
        f"in-distribution: {result.in_name}, {len(nll)} images as negatives, mean {nll.mean():.4f} bpd "
        f"(split {result.in_split}: {result.in_split_reason}; {result.in_available} images read)",
        f"Ĥ = {result.entropy_bpd:.4f} bpd (mean over {result.entropy_n} held-out images"
        + (", cached)" if result.entropy_cached else ")"),
        "",
        "Ĥ: the typical bound of in-distribution images; typ:S = |S − its held-out mean| flags "
        "images whose score S is atypically high or low (typ:nll is the paper's statistic).",
        "AUROC: probability that a random OOD image scores above a random in-distribution one "
        "(1 = perfect separation, 0.5 = chance); n images per class.",
        "Scores (bpd): nll, level<s> (level 1 coarsest), recon, detail = nll − level1, "
        "nll-L (L = best classical code), joint (all levels and L).",
        f"* the default score {DEFAULT_SCORE}: chosen on validation OOD sets only and checked on "
        "unseen ones (docs/math.md §8, benchmarks/results/ood_selection/report.md).",
        "",
        f"{'score':<16}" + "".join(f" {s[:width]:>{width}}" for s in sets),
        f"{'n per class':<16}" + "".join(f" {result.n[s]:>{width}}" for s in sets),
        f"{'n reference':<16}" + "".join(f" {result.entropy_n:>{width}}" for s in sets),
        f"{'n negatives':<16}" + "".join(f" {result.counts[s]['negatives']:>{width}}" for s in sets),
        f"{'n OOD (of)':<16}"
        + "".join(
            f" {str(result.counts[s]['ood']) + '/' + str(result.counts[s]['ood_available']):>{width}}"
            for s in sets
        ),
        f"{'mean nll (bpd)':<16}" + "".join(f" {result.mean_bpd[s]['nll']:>{width}.4f}" for s in sets),
    ]
    for name in result.score_names:
        label = f"{name} *" if name == DEFAULT_SCORE else name
        lines.append(f"{label:<16}" + "".join(f" {result.auroc[name][s]:>{width}.4f}" for s in sets))
    return "\n".join(lines)
