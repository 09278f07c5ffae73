"""report.md and latency.png of a GPU check (`oneranker_perf.gpu_check`) from its summary."""

from __future__ import annotations

from pathlib import Path

COMMAND = "python perf/gpu/gpu_check.py --carry artifacts/gpu_carry --out DIR"


def _table(rows: list[dict]) -> list[str]:
    lines = [
        "| history | batch | candidates | in process p50 | in process p99 | served p50 | served p99 | "
        "served / in process (p50) | mean served batch | rounds |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        a, b = r["in_process"], r["served"]
        mean_batch = f"{r['served_mean_batch']:.1f}" if r["served_mean_batch"] else "-"
        served = (
            f"{b['p50_ms']:.2f} | {b['p99_ms']:.2f} | {b['p50_ms'] / a['p50_ms']:.2f}x"
            if b
            else f"failed: {r['served_error']} | - | -"
        )
        lines.append(
            f"| {r['history']} | {r['batch']} | {r['candidates']} | {a['p50_ms']:.2f} | {a['p99_ms']:.2f} | "
            f"{served} | {mean_batch} | {a['n']} / {b['n'] if b else 0} |"
        )
    return lines


def markdown(summary: dict) -> str:
    env, model, cmp, plan = summary["environment"], summary["model"], summary["comparison"], summary["plan"]
    srv = summary["serving"]
    dry = plan["device"] == "cpu"
    lines = [
        f"# GPU check: OneRanker served by tritonserver, {env['device']}",
        "",
        f"**Status: {summary['status']}**" + (" (dry run on CPU: wiring only, the times mean nothing)" if dry else ""),
        "",
        f"Command: `{COMMAND}{' --dry-run' if dry else ''}`, where DIR is this folder.",
        "",
        f"- Machine: {env['device']}; Python {env['python']}, torch {env['torch']}"
        + (f" (CUDA {env['cuda']})" if env["cuda"] else "")
        + f", numpy {env['numpy']}; tritonserver from nvidia-pytriton {env['nvidia_pytriton']} (carried).",
        f"- Model: `{model['preset']}` preset, randomly initialised (latency does not depend on the weights): "
        f"d={model['d_model']}, {'+'.join(map(str, model['layers']))} layers, {model['codebook_size']} codes per "
        f"level, {model['num_ads']} ads, length buckets {model['length_buckets']}, beam width {model['beam_width']}.",
        f"- Engine: the `torch` repository (exported programs), fused topology: {srv['recommender_instances']} "
        f"instances of `recommender` on {srv['instance_kind']} ({srv['intra_op_threads']} intra-op thread each), "
        f"dynamic batching of up to {srv['max_batch_size']} requests with a {srv['max_queue_delay_us']} us wait.",
    ]
    if model["log_overrides"]:
        lines.append(
            f"- The synthetic log is smaller than the preset's ({model['log_overrides']}): the catalogue, the "
            "tokenizer and the model are the paper's, so are the graphs and the trie."
        )
    if summary["history_note"]:
        lines.append(f"- {summary['history_note'][0].upper()}{summary['history_note'][1:]}.")
    steps = ", ".join(f"{k.removesuffix('_s')} {v:.0f} s" for k, v in summary["steps_s"].items())
    lines += [
        f"- Time: {steps}; {summary['total_s']:.0f} s from the build to this report, the carry already "
        f"unpacked (budget {summary['time_budget_s']} s).",
        "",
        "## Served answers vs the same programs in process",
        "",
        f"{cmp['requests']} requests (history lengths {cmp['history_lengths']}), sent one at a time over HTTP and "
        f"run one at a time in process on {plan['device']}: top-k identical for {cmp['items_identical']}, largest "
        f"score difference {cmp['max_abs_score_diff']:.2e} (tolerance {cmp['score_tolerance']:g}). Each asked "
        f"for {cmp['candidates_asked']} candidates; the beam search generated and the ranker scored "
        f"{'-'.join(str(n) for n in sorted(set(cmp['candidates_ranked'])))} (the latency rows ask the same).",
    ]
    for m in cmp["mismatches"]:
        lines.append(f"- request {m['request']}: served {m['served']}, in process {m['in_process']}")
    lines += [
        "",
        "## Latency (ms)",
        "",
        *_table(summary["latency"]),
        "",
        "In process: `Recommender.recommend` of B requests (validation, tokenization, the generation graph with "
        "the beam search, the ranking graph with the top-k, results back on the host). Served: B concurrent "
        "HTTP requests of one user each (KServe v2, binary inputs, standard library client, one keep-alive "
        "connection per thread), latency until the last answer; the dynamic batcher forms the batches "
        "(mean served batch: requests / executions of `recommender` in that case, from Triton's metrics). "
        f"{plan['warmup']} warm-up rounds, then up to {plan['iters']} rounds or {plan['case_budget_s']:g} s per "
        "case and path.",
        "",
    ]
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> bool:
    """Bars of p50 (whiskers to p99) per case; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001 - missing, or built against another numpy: the figure is optional
        return False
    rows = [r for r in summary["latency"] if r["served"]]
    if not rows:
        return False
    labels = [f"L={r['history']}\nB={r['batch']}" for r in rows]
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 3.6))
    width = 0.38
    for k, (key, name) in enumerate((("in_process", "in process"), ("served", "served (HTTP)"))):
        p50 = [r[key]["p50_ms"] for r in rows]
        p99 = [r[key]["p99_ms"] for r in rows]
        xs = [i + (k - 0.5) * width for i in range(len(rows))]
        ax.bar(xs, p50, width, label=name, yerr=[[0] * len(rows), [b - a for a, b in zip(p50, p99)]], capsize=3)
    ax.set_xticks(range(len(rows)), labels)
    ax.set_ylabel("latency, ms (bar p50, whisker p99)")
    ax.set_title(f"{summary['model']['preset']} model, {summary['environment']['device']}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(summary: dict, out: Path) -> None:
    text = markdown(summary)
    if plot(summary, out / "latency.png"):
        text += "\n![latency](latency.png)\n"
    (out / "report.md").write_text(text)
