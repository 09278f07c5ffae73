"""The study's PNG plots, one call per figure: per-row metrics with intervals, value lift over the
cascade, training curves and distribution consistency. Inputs: `summarize`'s dict and the source's
`collect.SourceData` (histories, per-user DC ranks)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .rows import ROW, ROWS, RUNS

if TYPE_CHECKING:
    from .collect import SourceData


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_ablation(summary: dict, path: Path) -> None:
    plt = _plt()
    rows = summary["rows"]
    keys = [r.key for r in ROWS if r.key in rows]
    metrics = [m for m in ("HR@5", "NDCG@5", "vNDCG@5", "GAUC") if m in rows["full"]]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 4.2), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        mean = np.array([rows[k][m]["mean"] for k in keys])
        err = np.array([[rows[k][m]["mean"] - rows[k][m]["lo"], rows[k][m]["hi"] - rows[k][m]["mean"]] for k in keys]).T
        colors = [
            "C0"
            if ROW[k].scorer == "ranking" and k != "cascade"
            else "C1"
            if ROW[k].scorer in ("generation", "next_item")
            else "C2"
            if k == "cascade"
            else "C7"
            for k in keys
        ]
        y = np.arange(len(keys))
        ax.barh(y, mean, xerr=err, color=colors, capsize=3)
        for i, k in enumerate(keys):
            for s in rows[k][m]["seeds"]:
                ax.plot(s, i, "k.", ms=3)
        ax.set_yticks(y, [ROW[k].label.replace(" (generator + independent ranker)", "") for k in keys], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(m)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(
        f"{summary['source']}: 30-candidate protocol, mean over seeds, 95% seed-and-user interval "
        "(blue: Step-3 ranking, orange: generation / next-item, green: cascade, grey: popularity; dots: seeds)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_lift(summary: dict, path: Path) -> bool:
    lifts = summary.get("lifts", [])
    if not lifts:
        return False
    plt = _plt()
    metrics = list(dict.fromkeys(l["metric"] for l in lifts if "CPM" not in l["metric"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4.2), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        sel = [l for l in lifts if l["metric"] == m]
        y = np.arange(len(sel))
        mean = np.array([100 * l["lift"] for l in sel])
        err = np.array([[100 * (l["lift"] - l["lo"]), 100 * (l["hi"] - l["lift"])] for l in sel]).T
        ax.barh(
            y, mean, xerr=err, color=["C3" if l["lo"] > 0 else "C0" if l["hi"] < 0 else "C7" for l in sel], capsize=3
        )
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(y, [ROW[l["row"]].label for l in sel], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("% lift vs cascade")
        ax.set_title(m)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(
        f"{summary['source']}: value lift over the cascade, 95% paired seed-and-user interval "
        "(red: CI > 0, blue: CI < 0, grey: contains 0)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_curves(data: SourceData, path: Path) -> None:
    plt = _plt()
    terms = ("total", "mtp", "rank", "dc")
    fig, axes = plt.subplots(1, len(terms), figsize=(4.2 * len(terms), 3.8), squeeze=False)
    colors = {run: f"C{i % 10}" for i, run in enumerate([*RUNS, "hstu"])}  # one colour per run in every panel
    for run, by_seed in data.histories.items():
        hists = [h for h in by_seed.values() if h]
        if not hists:
            continue
        for ax, term in zip(axes[0], terms):
            if term not in hists[0][0]:
                continue
            length = min(len(h) for h in hists)
            y = np.mean([[row[term] for row in h[:length]] for h in hists], axis=0)
            w = max(1, length // 20)
            smooth = np.convolve(y, np.ones(w) / w, mode="valid")
            ax.plot(np.arange(len(smooth)) + w // 2, smooth, label=run, lw=1.2, color=colors.get(run))
    for ax, term in zip(axes[0], terms):
        ax.set_title(f"L_{term}" if term != "total" else "L_total")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=7)
    fig.suptitle(
        f"{data.source}: training losses (mean over seeds, moving average; HSTU's total = its sampled softmax)",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_dc(data: SourceData, summary: dict, path: Path) -> None:
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    keys = [k for k in ("full", "wo_dc") if k in data.dc]
    a1.boxplot(
        [np.concatenate([v["abs_diff"].reshape(-1) for v in data.dc[k].values()]) for k in keys], showfliers=False
    )
    a1.set_xticks(range(1, len(keys) + 1), [ROW[k].label for k in keys])
    a1.set_ylabel("|Step-2 rank - Step-3 rank| over the 30 candidates")
    a1.set_title("rank difference (box = IQR)")
    for k in keys:
        ov = summary["dc"][k]["overlap"]
        a2.plot(np.arange(1, len(ov) + 1), ov, marker=".", label=ROW[k].label)
    n = len(summary["dc"][keys[0]]["overlap"])
    a2.plot(np.arange(1, n + 1), np.arange(1, n + 1) / n, "k:", lw=0.8, label="random")
    a2.set_xlabel("K")
    a2.set_ylabel("top-K overlap (generation vs ranking)")
    a2.legend(fontsize=8)
    a2.grid(alpha=0.3)
    fig.suptitle(
        f"{data.source}: distribution consistency (paper Fig. 3), pooled over seeds and test users", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
