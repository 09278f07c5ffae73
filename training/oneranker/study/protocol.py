"""The study's protocol, fixed before any result: the declared choices (`StudySpec`), what they
resolve to with the current code (every run's config, seeds, split, stopping rule, metrics, the
power target, the plan of units), the measured budget, and the check that the committed file is
what the code resolves today.

    StudySpec --resolve()--> {"spec", "resolved", "budget"} --write_protocol--> OUT/protocol.json
    protocol_hash = sha256 of the file's canonical JSON (sorted keys, no whitespace)
    check_protocol(OUT/protocol.json) -> ProtocolCheck: hash, the commit that introduced the file,
        whether git shows it unchanged since, and every difference between the file's "resolved"
        and resolve(its spec) with the current code

The budget (`budget.py`) is measured, not derived, so it is hashed but not re-resolved.
"""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .rows import ROWS, RUNS, UNITS, pending_data_fields, source_config, variant_config

PROTOCOL_FILE = "protocol.json"
SEED_PLACEHOLDER = "<seed>"
SOURCES = ("synthetic", "movielens100k", "tafeng", "tafeng_time")
# cut levels of the budget, in the declared order (never the synthetic headline seeds)
CUTS = (
    "none",
    "ablation rows on the real sources dropped",
    "ablation rows on the real sources dropped; real-source seeds 5 -> 3",
)
SUMMARY_METRICS = {  # summary.json name -> per-user metric, where a source has it
    "hr@5": "HR@5",
    "ndcg@5": "NDCG@5",
    "vndcg@5": "vNDCG@5",
    "gauc": "GAUC",
    "slate_egmv@10": "slate_eGMV@10",
    "slate_rgmv@10": "slate_rGMV@10",
    "gen_recall@50": "gen_R@50",
}


@dataclass
class StudySpec:
    """The declared choices of one study. The defaults are the issue's study: the small preset,
    five model seeds, the data seed fixed, three sources, four working sessions of runs."""

    preset: str = "small"
    seeds: tuple = (0, 1, 2, 3, 4)
    data_seed: int = 0
    sources: tuple = SOURCES
    steps: int | None = None  # maximum steps per run (None: the preset's)
    threads: int = 1  # torch threads per unit
    max_users: int | None = None  # real sources (None: rows.source_config's per-source default)
    n_boot: int = 1000  # user-bootstrap resamples of every interval
    level: float = 0.95
    power_target_pct: float = 1.5  # full - cascade slate eGMV@10 half-width, % of full's mean (synthetic)
    cut: int = 0  # index into CUTS, set by the budget
    sessions: int = 4  # working sessions the runs must fit in
    session_minutes: float = 150.0
    parallel: int = 2  # `run --missing` processes per session (2 cores, `threads` each)
    real_cut_seeds: int = 3  # real-source seeds after cut level 2

    @classmethod
    def from_args(cls, args) -> StudySpec:
        """The spec of the study CLI's arguments (preset, seeds, sources, steps, threads,
        max_users, n_boot)."""
        return cls(
            preset=args.preset,
            seeds=tuple(args.seeds),
            sources=tuple(args.sources),
            steps=args.steps,
            threads=args.threads,
            max_users=args.max_users,
            n_boot=args.n_boot,
        )

    @classmethod
    def from_dict(cls, raw: dict) -> StudySpec:
        known = {f.name for f in fields(cls)}
        spec = cls(**{k: v for k, v in raw.items() if k in known})
        spec.seeds, spec.sources = tuple(spec.seeds), tuple(spec.sources)
        return spec

    def to_dict(self) -> dict:
        d = asdict(self)
        d["seeds"], d["sources"] = list(self.seeds), list(self.sources)
        return d

    def config(self, source: str, seed: int):
        return source_config(self.preset, source, seed, self.steps, self.threads, self.max_users, self.data_seed)


def plan(spec: StudySpec) -> dict[str, dict[str, list]]:
    """{source: {unit: [seeds]}} after the spec's cut level; model-free units get [None]."""
    out: dict[str, dict[str, list]] = {}
    for source in spec.sources:
        real = source != "synthetic"
        units: dict[str, list] = {}
        for unit in UNITS.values():
            if real and not unit.headline and spec.cut >= 1:
                continue
            seeds = list(spec.seeds)
            if real and spec.cut >= 2:
                seeds = seeds[: spec.real_cut_seeds]
            units[unit.key] = seeds if unit.seeded else [None]
        out[source] = units
    return out


def planned_units(spec: StudySpec) -> list[tuple[str, str, int | None]]:
    return [(s, u, seed) for s, units in plan(spec).items() for u, seeds in units.items() for seed in seeds]


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


def _seeded(cfgs: list[dict]) -> dict:
    """Flattened configs of the same run for two seeds -> one, the seed-dependent fields replaced
    by SEED_PLACEHOLDER (train.seed, tokenizer.seed, ...); `name` is a label and is dropped."""
    a, b = (_flatten(c) for c in cfgs)
    return {k: (v if b.get(k) == v else SEED_PLACEHOLDER) for k, v in a.items() if k != "name"}


def _unit_configs(spec: StudySpec, source: str) -> tuple[dict, dict]:
    """(base config of the source, {unit: {trained run: overrides of the base}})."""
    from ..baselines.hstu_study import protocol_entry
    from ..cascade import generator_config, ranker_config

    probe = (0, 1)  # two seeds tell the seed-dependent fields
    cfgs = [spec.config(source, s) for s in probe]
    base = _seeded([c.to_dict() for c in cfgs])
    runs: dict[str, dict] = {}
    for unit in UNITS.values():
        entry: dict = {}
        for run in unit.trains:
            if run == "hstu":
                entry[run] = _seeded([protocol_entry(c) for c in cfgs])
                continue
            if unit.kind == "cascade":
                make = generator_config if run == "s2" else ranker_config
            else:
                make = lambda c, r=run: variant_config(c, RUNS[r])  # noqa: E731
            resolved = _seeded([make(c).to_dict() for c in cfgs])
            entry[run] = {k: v for k, v in resolved.items() if base.get(k) != v}
        if unit.kind == "popularity":
            entry["popularity"] = "training-portion click/conversion counts per ad (no model, no seed)"
        runs[unit.key] = entry
    return base, runs


def split_of(cfg) -> str:
    split = getattr(cfg.data, "split", None)
    return str(split) if split is not None else "leave-last-out per user (no global time cutoff)"


def resolve(spec: StudySpec) -> dict:
    """The resolved protocol of `spec` with the current code (no data is loaded)."""
    sources = {}
    the_plan = plan(spec)
    for source in spec.sources:
        base, runs = _unit_configs(spec, source)
        cfg = spec.config(source, spec.seeds[0])
        t = cfg.train
        sources[source] = {
            "base_config": base,
            "runs": runs,
            "plan": the_plan[source],
            "split": split_of(cfg),
            "world": str(getattr(cfg.data, "world", "v1 (DataConfig.world not present)"))
            if source == "synthetic"
            else None,
            "pending": {f"data.{k}": v for k, v in pending_data_fields(source).items()},
            "stopping": {
                "early_stopping": t.early_stopping,
                "metric": f"valid {t.stop_metric} of the final scorer (30-candidate protocol)",
                "eval_every": t.eval_every,
                "patience": t.patience,
                "max_steps": t.steps,
                "restore_best": True,
            },
        }
    return {
        "rows": {r.key: {"label": r.label, "unit": r.unit, "scorer": r.scorer} for r in ROWS},
        "sources": sources,
        "metrics": {
            "summary": list(SUMMARY_METRICS),
            "protocol": "target among data.num_eval_candidates candidates: HR/NDCG/vNDCG@{1,3,5,10}, GAUC, "
            "eCPM/eGMV@5 (ground truth), rGMV@5 (real prices)",
            "full_catalogue": "generation recall/NDCG@{10,50}; final slate@10: HR, eCPM/eGMV (ground truth), "
            "rGMV (real prices)",
            "dc": "Step-2 vs Step-3 ranks of the candidates, full vs w/o L_DC (paper Fig. 3)",
        },
        "intervals": {
            "method": "stats.seed_user_interval: t-interval over seed means (S-1 df) in quadrature with a "
            "percentile user bootstrap; paired differences of per-seed, per-user differences over the "
            "seeds both rows have",
            "level": spec.level,
            "n_boot": spec.n_boot,
        },
        "power": {
            "source": "synthetic",
            "diff": "full-cascade",
            "metric": "slate_egmv@10",
            "target_half_width_pct": spec.power_target_pct,
        },
        "cut": {"level": spec.cut, "meaning": CUTS[spec.cut], "order": list(CUTS)},
    }


def build_protocol(spec: StudySpec, budget: dict | None = None) -> dict:
    return {"spec": spec.to_dict(), "resolved": resolve(spec), "budget": budget}


def canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def protocol_hash(protocol: dict) -> str:
    return hashlib.sha256(canonical(protocol).encode()).hexdigest()


def write_protocol(out: Path, protocol: dict) -> Path:
    path = Path(out) / PROTOCOL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(protocol, indent=1, sort_keys=True) + "\n")
    return path


def load_protocol(out: Path) -> dict:
    path = Path(out) / PROTOCOL_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: write it first (python -m oneranker.study protocol --write)")
    return json.loads(path.read_text())


def differences(a, b, prefix: str = "") -> list[str]:
    """Readable differences between two JSON values (file vs now)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in a:
                out.append(f"{key}: not in the file, now {json.dumps(b[k])[:80]}")
            elif k not in b:
                out.append(f"{key}: in the file ({json.dumps(a[k])[:80]}), gone now")
            else:
                out.extend(differences(a[k], b[k], key))
        return out
    if a != b:
        return [f"{prefix}: file {json.dumps(a)[:80]}, now {json.dumps(b)[:80]}"]
    return []


@dataclass
class ProtocolCheck:
    path: str
    hash: str | None
    commit: str | None  # the commit that introduced the file (None: not committed)
    unchanged: bool  # committed, unchanged since that commit, and equal to what the code resolves
    differences: list = field(default_factory=list)  # file vs the current resolution
    reasons: list = field(default_factory=list)  # why `unchanged` is False

    def sentence(self) -> str:
        if self.hash is None:
            return "No protocol file: nothing was fixed before these results."
        head = f"Protocol `{Path(self.path).name}` sha256 `{self.hash[:16]}`"
        if self.unchanged:
            return (
                f"{head}: unchanged since `{self.commit}` (the commit that introduced it), and equal to "
                "the protocol the code resolves now."
            )
        return f"{head}: NOT confirmed unchanged: " + "; ".join(self.reasons) + "."


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_history(path: Path) -> tuple[str | None, list[str], bool]:
    """(the commit that added `path`, commits that changed it after, working tree differs)."""
    path = Path(path).resolve()
    cwd = path.parent
    added = _git(["log", "--diff-filter=A", "--format=%h", "--", path.name], cwd)
    if not added:
        return None, [], True
    first = added.splitlines()[-1]
    later = _git(["log", "--format=%h", f"{first}..HEAD", "--", path.name], cwd) or ""
    dirty = _git(["status", "--porcelain", "--", path.name], cwd)
    return first, later.split(), bool(dirty) or dirty is None


def check_protocol(out: Path) -> ProtocolCheck:
    path = Path(out) / PROTOCOL_FILE
    if not path.exists():
        return ProtocolCheck(str(path), None, None, False, [], ["no protocol file"])
    stored = json.loads(path.read_text())
    digest = protocol_hash(stored)
    now = resolve(StudySpec.from_dict(stored["spec"]))
    diffs = differences(stored["resolved"], now)
    commit, later, dirty = git_history(path)
    reasons = []
    if commit is None:
        reasons.append("the file is not committed")
    else:
        if later:
            reasons.append(f"changed after `{commit}` in {', '.join(later)}")
        if dirty:
            reasons.append("the working tree differs from the committed file")
    if diffs:
        reasons.append(f"{len(diffs)} difference(s) from what the code resolves now: " + "; ".join(diffs[:5]))
    return ProtocolCheck(str(path), digest, commit, not reasons, diffs, reasons)


def spec_with(spec: StudySpec, **changes) -> StudySpec:
    out = copy.deepcopy(spec)
    for k, v in changes.items():
        setattr(out, k, v)
    return out
