"""Tables and plots of run records: a Markdown table of one record per method and code length,
and one PNG of mAP against code length (mean ± sd over seeds) with precision-recall curves."""
import statistics
from typing import Dict, Sequence

from .._atomic import atomic_write


def group_records(records: Sequence[Dict]) -> Dict[str, Dict[int, list]]:
    """``{method: {nbits: [records, one per seed]}}``, methods in order of first appearance."""
    groups: Dict[str, Dict[int, list]] = {}
    for r in records:
        groups.setdefault(r["method"], {}).setdefault(r["nbits"], []).append(r)
    return groups


def mean_sd(values: Sequence[float]):
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def plot_results(records: Sequence[Dict], path: str, title: str = "") -> None:
    """:func:`results_png` written to ``path`` atomically."""
    png = results_png(records, title)
    atomic_write(path, lambda f: f.write(png))


def results_png(records: Sequence[Dict], title: str = "") -> bytes:
    """One PNG: mAP@1000 against code length for every method (left) and the precision-recall
    curves of the longest codes (right). ImportError without matplotlib."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    groups = group_records(records)
    several = any(len(rs) > 1 for by_bits in groups.values() for rs in by_bits.values())
    for m, by_bits in groups.items():
        nbits = sorted(by_bits)
        stats = [mean_sd([r["metrics"]["mAP@1000"] for r in by_bits[b]]) for b in nbits]
        left.errorbar(nbits, [mean for mean, _ in stats], yerr=[sd for _, sd in stats] if several else None,
                      marker="o", capsize=3, label=m)
        longest = by_bits[nbits[-1]][0]  # the first seed's curve
        if "pr_curve" in longest:
            right.plot(longest["pr_curve"]["recall"], longest["pr_curve"]["precision"], label=f"{m} ({longest['nbits']} bits)")
    nbits = sorted({r["nbits"] for r in records})
    left.set(xlabel="bits", ylabel="mAP@1000", xticks=nbits,
             title="mAP@1000 vs code length" + (" (mean ± sd over seeds)" if several else ""))
    right.set(xlabel="recall", ylabel="precision", title="precision-recall (Hamming radius)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        return buffer.getvalue()
    finally:
        plt.close(fig)


def results_table(records: Sequence[Dict], keys: Sequence[str] = ("mAP@1000", "mAP@5000")) -> str:
    """A Markdown table: one row per method, one column per (code length, metric)."""
    nbits = sorted({r["nbits"] for r in records})
    head = "| method | " + " | ".join(f"{b} bits {k}" for b in nbits for k in keys) + " | train s |"
    lines = [head, "|" + " --- |" * (len(nbits) * len(keys) + 2)]
    for m, by_bits in group_records(records).items():
        cells, seconds = [], []
        for b in nbits:
            r = by_bits[b][0] if b in by_bits else None  # the first record of a cell
            cells += [f"{r['metrics'][k]:.4f}" if r else "" for k in keys]
            if r:
                t = r.get("train_seconds")
                seconds.append(f"{t:.0f}" if t is not None and t == t else "—")  # a loaded model: not trained here
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {' / '.join(seconds)} |")
    return "\n".join(lines)
