"""Temperature scaling of answer confidences, fitted on held-out cells.

Why: a label's probability is a softmax over the candidates' scores, and those scores (the
language model's log-likelihood, plus the read-out's log-probability in a product of experts)
are overconfident: asked as `evaluate` asks them, the default checkpoint's answers on the test
splits carried a mean confidence of 0.970 at accuracy 0.882 on zheng2017 and 0.967 at 0.784 on
bastidasponce2019 (benchmarks/results/calibration_test.md). Dividing the scores by one
temperature T > 1 before the softmax keeps every scored answer (the argmax does not move; where
candidates pool several learned labels, the pooled sums can) and makes the confidence mean what
it says, so a user can flag uncertain cells by it.

T is fitted by `instructcell calibrate` on the valid splits, as `evaluate` asks them (each cell
with its own phrasing), minimising the log loss of each answer's confidence against whether the
answer was right: the top label's probability is what users read, and this fits it directly,
whichever route (scored options, free answers chosen among learned labels) produced it. One
temperature for answers with the linear read-out, one for the language model alone.
temperature.json records the weights file it was fitted with; another weights file (a retrained
model copied over the checkpoint) makes the loader ignore it, with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import CheckpointError
from .io import file_sha256, write_json_atomic

log = logging.getLogger(__name__)

FILE = "temperature.json"
FORMAT_VERSION = 1
MODES = ("readout", "lm_alone")
LOG_T_GRID = np.linspace(np.log(0.1), np.log(100.0), 1201)  # search range of T, log-spaced


class StaleTemperatureWarning(UserWarning):
    """temperature.json was fitted with another weights file; confidences are left unscaled."""


@dataclass(frozen=True)
class DepthTerm:
    """How the temperature grows below `genes_ref` detected genes: T0 * (genes_ref / g) ** slope
    for a cell with g of them (why, and the fit: core_model/temperature_depth.py)."""

    slope: float
    genes_ref: float

    def factors(self, genes: np.ndarray) -> np.ndarray:
        """Per cell, what T0 is multiplied by (1 at `genes_ref` detected genes and above)."""
        g = np.maximum(np.asarray(genes, dtype=np.float64), 1.0)
        return np.exp(self.slope * np.maximum(0.0, np.log(self.genes_ref) - np.log(g)))

    def to_json(self) -> dict[str, float]:
        return {"slope": float(self.slope), "genes_ref": float(self.genes_ref)}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> "DepthTerm":
        slope, ref = float(value["slope"]), float(value["genes_ref"])
        if not np.isfinite(slope) or not np.isfinite(ref) or ref < 1:
            raise ValueError(f"invalid depth term {value}")
        return cls(slope, ref)


def confidences(rows: Sequence[np.ndarray], temperature: float | np.ndarray = 1.0) -> np.ndarray:
    """Top-label probability of each score row (scores / T, softmax over the row's finite entries);
    `temperature` one for all rows or one per row (core_model/temperature_depth.py)."""
    out = np.empty(len(rows))
    per_row = np.broadcast_to(np.asarray(temperature, dtype=np.float64), (len(rows),))
    for i, row in enumerate(rows):
        z = np.asarray(row, dtype=np.float64) / per_row[i]
        z = z - np.max(z)
        out[i] = 1.0 / np.exp(z[np.isfinite(z)]).sum()
    return out


def confidence_log_loss(conf: np.ndarray, correct: np.ndarray) -> float:
    """Mean binary log loss of confidences against whether each answer was right."""
    c = np.clip(conf, 1e-9, 1 - 1e-9)
    return float(-np.mean(np.where(correct, np.log(c), np.log1p(-c))))


def calibration_error(conf: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: the cell-weighted mean |confidence - accuracy| over equal-width
    confidence bins."""
    conf, correct = np.asarray(conf, dtype=float), np.asarray(correct, dtype=float)
    if len(conf) == 0:
        return float("nan")
    which = np.minimum((conf * bins).astype(int), bins - 1)
    total = 0.0
    for b in np.unique(which):
        m = which == b
        total += m.sum() * abs(conf[m].mean() - correct[m].mean())
    return float(total / len(conf))


def score_gaps(rows: Sequence[np.ndarray]) -> np.ndarray:
    """Each row's top score minus each of its finite scores (inf pads the shorter rows): all a
    softmax's top probability depends on, stacked once so that grid searches are cheap."""
    width = max(len(r) for r in rows)
    gaps = np.full((len(rows), width), np.inf)
    for i, row in enumerate(rows):
        row = np.asarray(row, dtype=np.float64)
        finite = row[np.isfinite(row)]
        gaps[i, : len(finite)] = np.max(finite) - finite
    return gaps


def fit_temperature(rows: Sequence[np.ndarray], correct: Sequence[bool]) -> float:
    """The T on a fine log-spaced grid (0.1 to 100) minimising `confidence_log_loss`."""
    correct = np.asarray(correct, dtype=bool)
    if len(rows) != len(correct) or len(rows) == 0:
        raise ValueError(f"need one correctness flag per score row and at least one row, "
                         f"got {len(rows)} and {len(correct)}")
    gaps = score_gaps(rows)
    losses = []
    for log_t in LOG_T_GRID:
        conf = 1.0 / np.exp(-gaps / np.exp(log_t)).sum(1)
        losses.append(confidence_log_loss(conf, correct))
    return float(np.exp(LOG_T_GRID[int(np.argmin(losses))]))


def summary(rows: Sequence[np.ndarray], correct: Sequence[bool], temperature: float | np.ndarray) -> dict[str, Any]:
    """Mean confidence, accuracy, ECE and log loss of the rows' answers at `temperature` (one, or
    one per row: then their median is recorded), and the share of answers with a confidence below
    0.5 with the accuracy below and from there."""
    correct = np.asarray(correct, dtype=bool)
    per_row = np.ndim(temperature) > 0
    t = (float(np.median(temperature)) if np.size(temperature) else 1.0) if per_row else float(temperature)
    if len(rows) == 0:
        return {"n_cells": 0, "temperature": t}
    conf = confidences(rows, temperature)
    low = conf < 0.5  # what a user would set aside as uncertain
    return {"n_cells": int(len(rows)), "temperature": float(t), "accuracy": float(correct.mean()),
            "mean_confidence": float(conf.mean()), "calibration_error": calibration_error(conf, correct),
            "log_loss": confidence_log_loss(conf, correct), "share_below_half": float(low.mean()),
            "accuracy_below_half": float(correct[low].mean()) if low.any() else None,
            "accuracy_from_half": float(correct[~low].mean()) if (~low).any() else None}


# ---------------------------------------------------------------- files
def save_temperatures(root: str | os.PathLike, temperatures: dict[str, float], info: dict[str, Any],
                      depth: dict[str, DepthTerm] | None = None) -> Path:
    """Write temperature.json (atomically), bound to the checkpoint's current weights file; `depth`:
    the modes' depth terms (core_model/temperature_depth.py), where fitted."""
    unknown = sorted((set(temperatures) | set(depth or {})) - set(MODES))
    if unknown:
        raise ValueError(f"temperature modes must be among {MODES}, got {unknown}")
    root = Path(root)
    meta = {"format_version": FORMAT_VERSION, "temperature": temperatures,
            "model_weights_sha256": file_sha256(root / "weights.safetensors"), **info}
    if depth:
        meta["depth"] = {mode: term.to_json() for mode, term in depth.items()}
    write_json_atomic(meta, root / FILE)
    return root / FILE


def load_temperatures(root: str | os.PathLike | None) -> dict[str, float]:
    """The temperatures stored with a checkpoint ({} when it has none, or when they were fitted
    with another weights file: then with a StaleTemperatureWarning)."""
    if root is None or not (Path(root) / FILE).is_file():
        return {}
    root = Path(root)
    meta = json.loads((root / FILE).read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{root}/{FILE}: format {meta.get('format_version')} is not {FORMAT_VERSION}")
    if meta.get("model_weights_sha256") != file_sha256(root / "weights.safetensors"):
        warnings.warn(f"{root}/{FILE} was fitted with another weights file; confidences are left unscaled "
                      f"(refit: instructcell calibrate --checkpoint {root})", StaleTemperatureWarning, stacklevel=2)
        return {}
    temps = {k: float(v) for k, v in meta.get("temperature", {}).items()}
    bad = {k: v for k, v in temps.items() if k not in MODES or not np.isfinite(v) or v <= 0}
    if bad:
        raise CheckpointError(f"{root}/{FILE}: invalid temperatures {bad}")
    return temps


def load_depth_terms(root: str | os.PathLike | None) -> dict[str, DepthTerm]:
    """The depth terms stored with a checkpoint's temperatures ({} without them, or when the
    temperatures are stale: `load_temperatures` has warned then)."""
    if root is None or not (Path(root) / FILE).is_file():
        return {}
    root = Path(root)
    meta = json.loads((root / FILE).read_text())
    if meta.get("model_weights_sha256") != file_sha256(root / "weights.safetensors"):
        return {}
    try:
        return {mode: DepthTerm.from_json(v) for mode, v in meta.get("depth", {}).items() if mode in MODES}
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{root}/{FILE}: invalid depth terms ({exc})") from exc


def rebind_temperatures(root: str | os.PathLike, old_sha256: str) -> bool:
    """After the weights file was rewritten without retraining (stored in another precision),
    point temperature.json at the new file, when it was fitted with the replaced one
    (`old_sha256`). Returns whether it was rebound."""
    path = Path(root) / FILE
    if not path.is_file():
        return False
    meta = json.loads(path.read_text())
    if meta.get("model_weights_sha256") != old_sha256:
        return False  # fitted with other weights still: it stays stale
    meta["model_weights_sha256"] = file_sha256(Path(root) / "weights.safetensors")
    write_json_atomic(meta, path)
    return True
