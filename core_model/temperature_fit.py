"""`instructcell calibrate`: fit a checkpoint's confidence temperatures on held-out cells.

Every label set the checkpoint learned and the catalog holds is asked as `evaluate` asks it (the
`valid` split by default, each cell with its own phrasing) twice: with the linear read-out
beside the language model and without it. For the first, the read-out is refitted on the train
split only, so that the cells the temperature is fitted on are held out from both experts (the
shipped read-out is fitted on train+valid, and would look surer on valid than it is on new
cells). One temperature per mode is then fitted over the pooled cells (core_model/temperature.py).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .checkpoint import LoadedModel, load_checkpoint
from .datasets import DatasetSpec, load_catalog
from .evaluation import BANK_OF_TASK, evaluate
from .precision import resolve_device
from .readout import Readout
from .readout_adapt import ADAPT_KEY
from .readout_train import fitted_readout
from .temperature import fit_temperature, save_temperatures, summary

log = logging.getLogger(__name__)
# A temperature is read off the answers that were wrong: with none or a handful the log loss keeps
# falling as scores sharpen, and the fit runs to the edge of its grid (T = 0.1 on a user's set of
# 18 valid cells all answered right, ten times surer than the raw, already overconfident, scores).
MIN_WRONG_ANSWERS = 5
TASK_CODE = {task: code for code, task in BANK_OF_TASK.items()}  # "annotation" -> "cta"


def held_out_readout(loaded: LoadedModel, specs: Sequence[DatasetSpec], split: str) -> Readout:
    """The checkpoint's read-out refitted (same L2 and weights) on `split` of `specs` only, its
    weights rounded to float16 as a checkpoint stores them; it keeps the shipped weight curves, and
    the shipped mean cells that the coverage curve is measured on."""
    shipped = loaded.readout
    readout = fitted_readout(loaded.label_sets, {s.name: s for s in specs}, loaded.vocab, split,
                             float(loaded.model.cfg.target_sum), l2=float(shipped.info.get("l2", 1.0)),
                             answer_weight=shipped.answer_weight)
    readout.weight = readout.weight.half().float()
    readout.weight_curve, readout.mean_cells = list(shipped.weight_curve), dict(shipped.mean_cells)
    readout.depth_curve, readout.set_depth_curves = list(shipped.depth_curve), dict(shipped.set_depth_curves)
    readout.info[ADAPT_KEY] = bool(shipped.info.get(ADAPT_KEY, False))  # goes with the coverage curve
    return readout.to(loaded.model.device)


def collect(loaded: LoadedModel, specs: Sequence[DatasetSpec], split: str, seed: int,
            readout: bool) -> tuple[list[np.ndarray], list[bool], dict[str, dict[str, Any]]]:
    """Score rows and correctness of every scored answer on `split` of each set, pooled, and the
    rows per set (for the record)."""
    rows: list[np.ndarray] = []
    correct: list[bool] = []
    per_set: dict[str, Any] = {}
    for spec in specs:
        result = evaluate(loaded, spec.path, spec.split_path, TASK_CODE[spec.task], spec.label_key, seed=seed,
                          split=split, readout=readout, keep_scores=True)
        rows += result["score_rows"]
        correct += result["correct"]
        per_set[spec.name] = (result["score_rows"], result["correct"])
        log.info("%s (%s): %d scored answers, accuracy %.3f", spec.name, "read-out" if readout else "LM alone",
                 len(result["correct"]), float(np.mean(result["correct"])) if result["correct"] else float("nan"))
    return rows, correct, per_set


def calibrate_checkpoint(checkpoint_dir: str | os.PathLike, specs: Sequence[DatasetSpec] | None = None, *,
                         split: str = "valid", readout_split: str = "train", seed: int = 0,
                         precision: str = "float32", device: str = "cpu",
                         command: str | None = None, min_wrong: int = MIN_WRONG_ANSWERS) -> dict[str, Any]:
    """Fit and write temperature.json for a checkpoint; returns what it recorded.

    `specs` default to the catalog sets the checkpoint has label sets for. Without a read-out
    only the language model's temperature is fitted. A mode with fewer than `min_wrong` wrong
    answers gets no temperature (see MIN_WRONG_ANSWERS); its report says why."""
    root = Path(checkpoint_dir)
    loaded = load_checkpoint(root, resolve_device(device), precision=precision)
    specs = [s for s in (specs if specs is not None else load_catalog()) if s.name in loaded.label_sets]
    if not specs:
        raise ValueError(f"no data for any of the checkpoint's label sets {sorted(loaded.label_sets)}")
    modes: dict[str, bool] = {"lm_alone": False}
    if loaded.readout is not None:
        loaded.readout = held_out_readout(loaded, specs, readout_split)
        modes["readout"] = True
    temperatures, report = {}, {}
    for mode, with_readout in modes.items():
        rows, correct, per_set = collect(loaded, specs, split, seed, with_readout)
        if not rows:
            log.warning("%s: no scored answers to fit a temperature on", mode)
            continue
        wrong = len(correct) - int(np.sum(correct))
        if wrong < min_wrong:
            note = (f"{wrong} wrong of {len(correct)} scored answers on {split}, fewer than {min_wrong}: "
                    "too few to fit a temperature on, so none is stored for this mode and its confidences stay "
                    "unscaled (overconfident); calibrate with more held-out cells")
            log.warning("%s: %s", mode, note)
            report[mode] = {"skipped": note}
            continue
        t = fit_temperature(rows, correct)
        temperatures[mode] = t
        report[mode] = {"pooled": {"unscaled": summary(rows, correct, 1.0), "fitted": summary(rows, correct, t)},
                        "per_set": {name: {"unscaled": summary(r, c, 1.0), "fitted": summary(r, c, t)}
                                    for name, (r, c) in per_set.items()}}
        log.info("%s: temperature %.3f (calibration error %.3f -> %.3f on %s, %d answers)", mode, t,
                 report[mode]["pooled"]["unscaled"]["calibration_error"],
                 report[mode]["pooled"]["fitted"]["calibration_error"], split, len(rows))
    info = {"fitted_on": {"split": split, "seed": seed, "datasets": [s.name for s in specs],
                          "readout_fitted_on": readout_split if "readout" in modes else None,
                          "precision": loaded.model.precision},
            "fit_report": report, "command": command,
            "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    save_temperatures(root, temperatures, info)
    return {"temperature": temperatures, **info}
