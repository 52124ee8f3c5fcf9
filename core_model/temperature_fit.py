"""`instructcell calibrate`: fit a checkpoint's confidence temperatures on held-out cells.

Every label set the checkpoint learned and the catalog holds is asked as `evaluate` asks it (the
`valid` split by default, each cell with its own phrasing) twice: with the linear read-out
beside the language model and without it. For the first, the read-out is refitted on the train
split only, so that the cells the temperature is fitted on are held out from both experts (the
shipped read-out is fitted on train+valid, and would look surer on valid than it is on new
cells). One temperature per mode is then fitted over the pooled cells (core_model/temperature.py).
With `depths` the held-out cells are also read thinned to those fractions of their counts
(core_model/thinning.py), and each temperature is fitted with a depth term that raises it in cells
with few detected genes (core_model/temperature_depth.py).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import tempfile
from dataclasses import dataclass, field
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
from .temperature import MODES, fit_temperature, save_temperatures, summary
from .temperature_depth import fit_depth_temperature
from .thinning import thinned_split

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


@dataclass
class Collected:
    """Every scored answer's score row, whether it was right and the cell's detected genes, pooled,
    and the same per set (and depth) for the record."""

    rows: list[np.ndarray] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)
    genes: list[float] = field(default_factory=list)
    per_set: dict[str, tuple[list[np.ndarray], list[bool], list[float]]] = field(default_factory=dict)


def collect(loaded: LoadedModel, specs: Sequence[DatasetSpec], split: str, seed: int, readout: bool,
            depths: Sequence[float] = (1.0,)) -> Collected:
    """The scored answers on `split` of each set, at each depth (a fraction of each cell's counts,
    core_model/thinning.py; sets whose values hold no counts are read at full depth only)."""
    out = Collected()
    with tempfile.TemporaryDirectory(prefix="instructcell_thinned_") as tmp:
        for spec in specs:
            for i, depth in enumerate(depths):
                name = spec.name if depth == 1.0 else f"{spec.name} at {depth:g} of its counts"
                try:
                    read = spec if depth == 1.0 else thinned_split(spec, split, depth, seed + i, Path(tmp))
                except ValueError as exc:
                    log.info("%s: not thinned (%s)", spec.name, exc)
                    continue
                result = evaluate(loaded, read.path, read.split_path, TASK_CODE[spec.task], spec.label_key,
                                  seed=seed, split=split, readout=readout, keep_scores=True)
                out.rows += result["score_rows"]
                out.correct += result["correct"]
                out.genes += result["scored_genes"]
                out.per_set[name] = (result["score_rows"], result["correct"], result["scored_genes"])
                log.info("%s (%s): %d scored answers, accuracy %.3f", name, "read-out" if readout else "LM alone",
                         len(result["correct"]),
                         float(np.mean(result["correct"])) if result["correct"] else float("nan"))
    return out


def calibrate_checkpoint(checkpoint_dir: str | os.PathLike, specs: Sequence[DatasetSpec] | None = None, *,
                         split: str = "valid", readout_split: str = "train", seed: int = 0,
                         precision: str = "float32", device: str = "cpu",
                         command: str | None = None, min_wrong: int = MIN_WRONG_ANSWERS,
                         depths: Sequence[float] = (), depth_modes: Sequence[str] = MODES) -> dict[str, Any]:
    """Fit and write temperature.json for a checkpoint; returns what it recorded.

    `specs` default to the catalog sets the checkpoint has label sets for. Without a read-out
    only the language model's temperature is fitted. A mode with fewer than `min_wrong` wrong
    answers gets no temperature (see MIN_WRONG_ANSWERS); its report says why. With `depths`
    (fractions of each cell's counts, 1 for the cells as they are) the cells are also read
    thinned to each, and a depth term is fitted with the temperature of each of `depth_modes`
    (core_model/temperature_depth.py); the other modes are fitted on the cells as they are."""
    if any(not 0 < d <= 1 for d in depths):
        raise ValueError(f"depths are fractions of each cell's counts, in (0, 1]; got {list(depths)}")
    depths = sorted(set(depths) | {1.0}, reverse=True) if depths else [1.0]
    root = Path(checkpoint_dir)
    loaded = load_checkpoint(root, resolve_device(device), precision=precision)
    specs = [s for s in (specs if specs is not None else load_catalog()) if s.name in loaded.label_sets]
    if not specs:
        raise ValueError(f"no data for any of the checkpoint's label sets {sorted(loaded.label_sets)}")
    modes: dict[str, bool] = {"lm_alone": False}
    if loaded.readout is not None:
        loaded.readout = held_out_readout(loaded, specs, readout_split)
        modes["readout"] = True
    temperatures, report, terms = {}, {}, {}
    for mode, with_readout in modes.items():
        got = collect(loaded, specs, split, seed, with_readout, depths if mode in depth_modes else [1.0])
        rows, correct = got.rows, got.correct
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
        if len(depths) > 1 and mode in depth_modes:
            t, terms[mode] = fit_depth_temperature(rows, correct, got.genes)
        else:
            t = fit_temperature(rows, correct)
        temperatures[mode] = t

        def at(genes: Sequence[float]) -> float | np.ndarray:  # the fitted temperature of each cell
            return t if mode not in terms else t * terms[mode].factors(np.asarray(genes))

        report[mode] = {"pooled": {"unscaled": summary(rows, correct, 1.0),
                                   "fitted": summary(rows, correct, at(got.genes))},
                        "per_set": {name: {"unscaled": summary(r, c, 1.0), "fitted": summary(r, c, at(g))}
                                    for name, (r, c, g) in got.per_set.items()}}
        log.info("%s: temperature %.3f%s (calibration error %.3f -> %.3f on %s, %d answers)", mode, t,
                 f", depth term {terms[mode].to_json()}" if mode in terms else "",
                 report[mode]["pooled"]["unscaled"]["calibration_error"],
                 report[mode]["pooled"]["fitted"]["calibration_error"], split, len(rows))
    info = {"fitted_on": {"split": split, "seed": seed, "datasets": [s.name for s in specs], "depths": depths,
                          "depth_modes": [m for m in modes if m in depth_modes] if len(depths) > 1 else [],
                          "readout_fitted_on": readout_split if "readout" in modes else None,
                          "precision": loaded.model.precision},
            "fit_report": report, "command": command,
            "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    save_temperatures(root, temperatures, info, {m: terms[m] for m in temperatures if m in terms})
    return {"temperature": temperatures, "depth": {m: term.to_json() for m, term in terms.items()}, **info}
