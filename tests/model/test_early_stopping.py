"""Validation stopping: the declared rule stops a degrading run, restores the best weights and
records the stopping and best steps (tiny preset, a few dozen steps)."""

from __future__ import annotations

import copy
import json

import torch

from oneranker.evaluate import validation_metric


def _cfg(tiny_cfg, early: bool, steps: int):
    cfg = copy.deepcopy(tiny_cfg)
    cfg.train.early_stopping, cfg.train.eval_every, cfg.train.patience = early, 10, 3
    cfg.train.steps, cfg.train.warmup_steps = steps, 5
    return cfg.validate()


def test_degrading_run_stops_and_restores_best_checkpoint(tiny_cfg, tiny_prep, tmp_path):
    """After step 40 a hook wrecks the weights at every step (the validation metric collapses):
    the run must stop `patience` evaluations after its best one and hand back exactly the weights
    evaluated best, which the checkpoint on disk holds too."""
    cfg = _cfg(tiny_cfg, early=True, steps=300)
    snapshots: dict[int, dict] = {}
    degrade_after = 40

    def hook(done: int, model) -> None:
        if done > degrade_after:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p))
        if done % cfg.train.eval_every == 0:
            snapshots[done] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    from oneranker.checkpoint import load_run
    from oneranker.train import train

    result = train(cfg, tmp_path, prep=tiny_prep, progress=False, after_step=hook)
    stop = result["summary"]["stopping"]
    assert stop["restored_best"]
    assert 10 <= stop["best_step"] <= degrade_after
    assert stop["stopped_step"] == stop["best_step"] + cfg.train.patience * cfg.train.eval_every < cfg.train.steps
    model = result["model"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, snapshots[stop["best_step"]][name]), name
    assert validation_metric(model, tiny_prep, cfg.train.stop_metric) == stop["best_value"]
    values = dict((s, v) for s, v in stop["evaluations"])
    assert max(values.values()) == stop["best_value"] > values[stop["stopped_step"]]
    # recorded on disk: manifest, history rows, and the checkpoint is the best one
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["stopping"]["best_step"] == stop["best_step"]
    assert manifest["stopping"]["stopped_step"] == manifest["step"] == stop["stopped_step"]
    history = json.loads((tmp_path / "train_history.json").read_text())
    assert len(history) == stop["stopped_step"]
    assert [h["step"] + 1 for h in history if "valid_HR@5" in h] == sorted(values)
    _, reloaded, _, _ = load_run(tmp_path)
    for name, value in reloaded.state_dict().items():
        assert torch.equal(value, snapshots[stop["best_step"]][name]), name


def test_fixed_budget_switch_runs_every_step_and_restores_nothing(tiny_cfg, tiny_prep, tmp_path):
    cfg = _cfg(tiny_cfg, early=False, steps=30)
    last: dict = {}

    def hook(done: int, model) -> None:
        if done == cfg.train.steps:
            last.update({k: v.detach().clone() for k, v in model.state_dict().items()})

    from oneranker.train import train

    result = train(cfg, tmp_path, prep=tiny_prep, progress=False, after_step=hook)
    stop = result["summary"]["stopping"]
    assert stop["stopped_step"] == cfg.train.steps and not stop["restored_best"]
    assert [s for s, _ in stop["evaluations"]] == [10, 20, 30]  # the curve is still recorded
    for name, value in result["model"].state_dict().items():
        assert torch.equal(value, last[name]), name
