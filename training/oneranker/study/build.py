"""The rebuild: OUT/protocol.json + OUT/runs/** -> report.md, plots, results.json, summary.json.

    collect (run files -> SourceData per source) -> aggregate.summarize (intervals, orderings,
    lifts, DC, power) -> plots -> report.write_report -> results.json -> summary.write_summary
Deterministic in the run files (fixed bootstrap seeds), so a rebuild reproduces the report the
runs ended with; the commit line names the checkout that rebuilt it.
"""

from __future__ import annotations

import json
from pathlib import Path

from .report import ReportContext, write_report


def summarize_folder(out: Path, log=None) -> tuple:
    """OUT -> (spec, {source: SourceData}, [summary per source], runs done, runs missing)."""
    from .aggregate import summarize
    from .collect import collect
    from .protocol import StudySpec, load_protocol

    protocol = load_protocol(out)
    spec = StudySpec.from_dict(protocol["spec"])
    data, done, missing = collect(out, protocol)
    summaries = []
    for source, d in data.items():
        s = summarize(d, spec.n_boot, spec.level, spec.power_target_pct)
        s["split"] = protocol["resolved"]["sources"][source]["split"]
        summaries.append(s)
        if log:
            log(f"{source}: summarized ({len(d.per_user)} rows)")
    return spec, data, summaries, done, missing


def summary_from_files(out: Path, command: str) -> dict:
    """summary.json's content rebuilt from OUT's run files, writing nothing
    (`oneranker_perf.summaries`)."""
    from .protocol import check_protocol
    from .summary import jsonable, runs_summary

    spec, _, summaries, done, missing = summarize_folder(Path(out))
    ctx = ReportContext(command, spec, check_protocol(Path(out)), done, missing)
    return jsonable(runs_summary(summaries, ctx))


def build_report(out: Path, command: str | None = None, log=None) -> dict:
    """OUT/protocol.json + OUT/runs/** -> OUT/report.md, plots, results.json, summary.json, from
    whatever run files exist (the missing ones are listed). Returns results.json's payload."""
    from .plots import plot_ablation, plot_curves, plot_dc, plot_lift
    from .protocol import check_protocol
    from .summary import jsonable, write_summary

    out = Path(out)
    spec, data, summaries, done, missing = summarize_folder(out, log)
    plots = {}
    for s in summaries:
        source, d = s["source"], data[s["source"]]
        if s["skipped"]:
            continue
        files = []
        if "full" in s["rows"]:
            plot_ablation(s, out / f"ablation_{source}.png")
            files.append(("Metric per row (ablations and baselines)", f"ablation_{source}.png"))
        if plot_lift(s, out / f"gmv_lift_{source}.png"):
            files.append(("Value lift over the cascade", f"gmv_lift_{source}.png"))
        if d.histories:
            plot_curves(d, out / f"training_curves_{source}.png")
            files.append(("Training curves", f"training_curves_{source}.png"))
        if d.dc:
            plot_dc(d, s, out / f"dc_{source}.png")
            files.append(("Distribution consistency (Fig. 3)", f"dc_{source}.png"))
        plots[source] = files
    check = check_protocol(out)
    command = command or f"python -m oneranker.study report --out {out}"
    ctx = ReportContext(command, spec, check, done, missing, plots)
    write_report(summaries, ctx, out)
    payload = {
        "preset": spec.preset,
        "seeds": list(spec.seeds),
        "protocol_hash": check.hash,
        "runs_done": done,
        "runs_missing": missing,
        "summaries": summaries,
    }
    (out / "results.json").write_text(json.dumps(jsonable(payload), indent=1) + "\n")
    write_summary(summaries, ctx, out)
    if log:
        log(f"wrote {out / 'report.md'} ({len(done)} runs done, {len(missing)} missing)")
    return payload
