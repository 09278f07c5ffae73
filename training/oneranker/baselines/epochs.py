"""The epoch loop with validation stopping shared by the MovieLens-protocol trainers
(`hstu.fit`, `generator_eval.fit`).

    for epoch 1..max_epochs:
        run_epoch(epoch) -> training losses of the epoch        (the trainer's own steps)
        validate()       -> {"val_ndcg@10": ..., other curve fields}
        best validation NDCG@10 so far: keep a copy of the weights
        stop after `patience` epochs without a strict improvement, or when the wall time since
        the loop began reaches `max_minutes` (checked after each epoch's validation)
    the best epoch's weights are restored, the model left in eval mode.

Stopping metric: validation NDCG@10 (declared in both trainers' docstrings before any run).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import numpy as np
from tqdm import tqdm

STOP_METRIC = "val_ndcg@10"


def fit_by_epochs(
    model,
    run_epoch: Callable[[int], list[float]],
    validate: Callable[[], dict],
    max_epochs: int,
    patience: int,
    max_minutes: float,
    desc: str,
    progress: bool,
) -> dict:
    """-> {"curve", "best_epoch", "epochs", "stopped_by", "train_seconds", "epoch_seconds",
    "wall_seconds"}; curve rows: epoch, loss, the fields of validate(), train and wall seconds."""
    curve, best, best_state, best_epoch, bad = [], -np.inf, None, 0, 0
    stopped_by, train_seconds, epoch_seconds = "max_epochs", 0.0, []
    loop_started = time.time()
    bar = tqdm(total=max_epochs, desc=desc, disable=not progress)
    for epoch in range(1, max_epochs + 1):
        model.train()
        started = time.time()
        losses = run_epoch(epoch)
        epoch_seconds.append(time.time() - started)
        train_seconds += epoch_seconds[-1]
        val = validate()
        curve.append(
            {
                "epoch": epoch,
                "loss": float(np.mean(losses)),
                **val,
                "train_seconds": train_seconds,
                "wall_seconds": time.time() - loop_started,
            }
        )
        if val[STOP_METRIC] > best:
            best, best_epoch, bad = val[STOP_METRIC], epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
        bar.update(1)
        bar.set_postfix(loss=f"{curve[-1]['loss']:.3f}", val_ndcg10=f"{val[STOP_METRIC]:.4f}", best=best_epoch)
        if bad >= patience:
            stopped_by = "patience"
            break
        if time.time() - loop_started >= max_minutes * 60:
            stopped_by = "max_minutes"
            break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    return {
        "curve": curve,
        "best_epoch": best_epoch,
        "epochs": len(curve),
        "stopped_by": stopped_by,
        "train_seconds": train_seconds,
        "epoch_seconds": epoch_seconds,
        "wall_seconds": time.time() - loop_started,
    }
