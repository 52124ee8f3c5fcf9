"""How should the linear gene read-out be fitted? Variants compared on valid, the language model held fixed.

The read-out (core_model/readout.py) joins the language model's scores as a product of experts;
how it is fitted (L2 penalty, feature scaling, gene panels) and weighted is a choice made on the
valid splits, with every read-out fitted on the train splits only (of the sets evaluated). The
language model's part of every answer does not depend on the read-out, so it is computed once: a
first pass through `evaluate` records what the model returned for each call (candidate scores,
decoded answers), and each variant then replays `evaluate` on those records with its own
read-out: exactly the answers a checkpoint holding that read-out would give (same phrasings per
cell, same option orders), in seconds instead of an LM pass per variant. Each variant is compared
with the first by the paired bootstrap of benchmarks/compare_checkpoints.py.

    python benchmarks/readout_variants.py --variants raw:1 raw:10 z:1 z:10 --out-dir /tmp/ro

A variant is SCALING:L2[:WEIGHT].
- SCALING `raw`: the model's input, log1p(CP10k) over the vocabulary.
- `z`: each gene centred and scaled by its standard deviation over the pooled train cells
  (floored at `--sd-floor`), folded back into the weights, so the result is again a linear map
  of log1p(CP10k) and needs no change to the checkpoint format.
- `panel`: raw, fitted on the train cells plus one copy of each seen through a random gene panel
  (`train-readout --panel-copies 1`, core_model/readout_train.py).
- `hvgpanel`: raw, fitted on the train cells plus one copy of each holding only its set's N most
  variable genes (N drawn per cell from 500 to 3,000; ranked on the set's train cells as scanpy
  ranks them), normalized over those (`train-readout --hvg-copies 1`, core_model/gene_panels.py).
- `impute`: the raw fit, answering a file that lacks some of the vocabulary's genes as if it had
  them: absent genes take the label set's mean training cell, and the present genes' values are
  scaled down to the share of expression they carry in that mean cell (the file was normalized
  over fewer genes than training cells were). `fill`: the absent genes only, no rescaling. On a
  file holding every gene its set's training files held, both equal `raw`.
L2 as in `fit_readout`; WEIGHT is the read-out's weight in the product of experts (default: the
checkpoint's). PRIOR (default 0) takes PRIOR times each label's log-frequency in the fitted cells
off the combined score (`label_log_prior`, folded into the read-out's bias): both experts
were trained on those frequencies, so their product counts the label prior twice; 1 counts it
once, 2 not at all (every label equally likely a priori, what macro-F1 rewards).
`--eval-panel 0.1` evaluates on copies of the files keeping a random 10% of their genes (the
read-outs are still fitted on the full files); `--eval-hvg 2000` on copies keeping each file's
2,000 most variable genes, as a file subset to HVGs in a scanpy workflow would
(benchmarks/file_copies.py). `--complete-input` completes those cells as `impute` does before the
language model reads them too (the record is then of the completed cells).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from compare_checkpoints import TASK_CODE, compare, split_specs
from instructcell_agent import default_checkpoint_path
from instructcell_agent.core_model.alignment import align_to_vocab
from instructcell_agent.core_model.checkpoint import LoadedModel, load_checkpoint
from instructcell_agent.core_model.datasets import shared_root
from instructcell_agent.core_model.evaluation import evaluate
from instructcell_agent.core_model.io import read_h5ad
from instructcell_agent.core_model.readout import Readout, fit_readout
from instructcell_agent.core_model.readout_train import readout_blocks
from file_copies import with_hvg, with_panel
from report_io import run_meta, write_report

logger = logging.getLogger("readout_variants")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=default_checkpoint_path())
    p.add_argument("--variants", nargs="+", default=["raw:1", "raw:10", "raw:100", "z:10", "z:100", "z:1000"],
                   help="SCALING:L2[:WEIGHT[:PRIOR]] each; the first is the reference")
    p.add_argument("--sd-floor", type=float, default=0.1, help="smallest standard deviation `z` divides by")
    p.add_argument("--split", default="valid", choices=["valid", "test"])
    p.add_argument("--fit-split", default="train")
    p.add_argument("--datasets", help="comma-separated catalog names (default: every annotation and drug set)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-panel", type=float, default=None,
                   help="evaluate on files holding only this share of each set's genes (one random panel per "
                        "set, as a targeted-panel or shallow file would), to see what the read-out does there")
    p.add_argument("--eval-hvg", type=int, default=None,
                   help="evaluate on files holding only their N most variable genes (scanpy, seurat flavor)")
    p.add_argument("--complete-input", action="store_true",
                   help="complete each evaluated file's gene panel (as `impute` does) before the language model "
                        "reads it too, not only the read-out")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    return p.parse_args(argv)


def fit_blocks(loaded: LoadedModel, specs: list[Any], split: str, panel_copies: int = 0, seed: int = 0,
               hvg_copies: int = 0) -> list[tuple[np.ndarray, np.ndarray, list[str]]]:
    """`fit_readout`'s blocks for the checkpoint's label sets, from `split` of `specs`."""
    known = {spec.name: spec for spec in specs}
    return readout_blocks(loaded.label_sets, known, loaded.vocab, split, float(loaded.model.cfg.target_sum),
                          panel_copies, seed, hvg_copies)[0]


def label_log_prior(blocks: list[tuple[np.ndarray, np.ndarray, list[str]]], labels: Sequence[str]) -> torch.Tensor:
    """(len(labels),) log-frequency of each label among the cells of the blocks whose label set
    holds it (a label several sets share pools their cells; one with no cell counts as one)."""
    hits, totals = np.zeros(len(labels)), np.zeros(len(labels))
    column = {label: i for i, label in enumerate(labels)}
    for _, truth, label_set in blocks:
        totals[[column[label] for label in label_set]] += len(truth)
        names, counts = np.unique(np.asarray(truth).astype(str), return_counts=True)
        hits[[column[name] for name in names]] += counts
    return torch.as_tensor(np.log(np.maximum(hits, 1) / np.maximum(totals, 1)), dtype=torch.float32)


@dataclasses.dataclass
class ImputingReadout(Readout):
    """A read-out that completes the file's gene panel before answering (`impute`, `fill`)."""

    rescale: bool = True
    present: torch.Tensor | None = None  # bool over the vocabulary: the evaluated file has the gene
    fill: torch.Tensor | None = None  # the evaluated set's mean training cell, log1p(CP10k)

    def log_probs(self, expr: torch.Tensor, labels: Sequence[str]) -> torch.Tensor:
        if self.present is not None:
            expr = complete_panel(expr, self.present, self.fill, self.rescale)
        return super().log_probs(expr, labels)


def complete_panel(expr: torch.Tensor, present: torch.Tensor, mean_cell: torch.Tensor, rescale: bool) -> torch.Tensor:
    """log1p(CP10k) cells of a file holding the `present` genes, put on the scale of cells that
    hold every gene: absent genes take `mean_cell`; present genes, normalized over fewer genes,
    are scaled to the share of expression they carry in `mean_cell` (expm1 of its log values)."""
    if rescale:
        linear = torch.expm1(mean_cell.double())
        share = float(linear[present].sum() / linear.sum().clamp(min=1e-12))
        expr = torch.log1p(torch.expm1(expr.double()) * share).to(expr.dtype)
    return torch.where(present, expr, mean_cell.to(expr.dtype))


def fit_variant(blocks: list[tuple[np.ndarray, np.ndarray, list[str]]], n_genes: int, scaling: str, l2: float,
                sd_floor: float, answer_weight: float) -> Readout:
    """A read-out fitted as the variant says, expressed over log1p(CP10k) and rounded to float16
    as a checkpoint stores it."""
    if scaling == "raw":
        labels, weight, bias, info = fit_readout(blocks, n_genes, l2=l2)
    elif scaling == "z":
        pooled = np.concatenate([b[0] for b in blocks])
        mu = pooled.mean(0)
        sd = np.maximum(pooled.std(0), sd_floor)
        del pooled
        scaled = [((x - mu) / sd, y, s) for x, y, s in blocks]
        labels, w_z, b_z, info = fit_readout(scaled, n_genes, l2=l2)
        mu_t, sd_t = torch.from_numpy(mu), torch.from_numpy(sd)
        weight = w_z / sd_t
        bias = b_z - w_z @ (mu_t / sd_t)
    else:
        raise ValueError(f"unknown scaling {scaling!r}; use raw or z")
    return Readout(labels, weight.half().float(), bias, answer_weight, info)


class Recorder:
    """Records what the language model returns during one `evaluate`, then plays it back."""

    def __init__(self, model: Any) -> None:
        self.model, self.calls = model, []
        self.originals = {name: getattr(model, name) for name in ("start", "score_candidates", "generate")}

    def record(self) -> None:
        def scored(*args, **kwargs):
            out = self.originals["score_candidates"](*args, **kwargs)
            self.calls.append(out.clone())
            return out

        def generated(*args, **kwargs):
            out = self.originals["generate"](*args, **kwargs)
            self.calls.append(list(out))
            return out

        self.model.score_candidates, self.model.generate = scored, generated

    def replay(self) -> None:
        queue = list(self.calls)
        self.model.start = lambda *args, **kwargs: None
        self.model.score_candidates = lambda *args, **kwargs: queue.pop(0).clone()
        self.model.generate = lambda *args, **kwargs: list(queue.pop(0))

    def restore(self) -> None:
        """The model's own methods again (the patches live on the instance only)."""
        for name in self.originals:
            self.model.__dict__.pop(name, None)


def cells_of(result: dict[str, Any]) -> dict[str, Any]:
    return {"macro_f1": result["macro_f1"], "labels": result["labels"], **result["cells"]}


def readout_alone_f1(readout: Readout, blocks: list[tuple[np.ndarray, np.ndarray, list[str]]],
                     names: list[str], panels: dict[str, Any]) -> dict[str, float]:
    """Macro-F1 of the read-out on its own (argmax within each set's labels) on the evaluated split."""
    from sklearn.metrics import f1_score

    out = {}
    for name, (x, truth, labels) in zip(names, blocks):
        prepare(readout, name, panels)
        pred = np.asarray(labels)[readout.log_probs(torch.from_numpy(x), labels).argmax(1).numpy()]
        out[name] = float(f1_score(truth, pred, labels=labels, average="macro", zero_division=0))
    return out


def prepare(readout: Readout, name: str, panels: dict[str, Any]) -> None:
    """Point an imputing read-out at the evaluated file of set `name` (present genes, mean cell)."""
    if isinstance(readout, ImputingReadout):
        readout.present, readout.fill = panels[name]


def evaluated_files(meta: dict[str, Any]) -> str:
    """What the evaluated copies of the files held, in words."""
    if meta.get("eval_hvg"):
        held = f"each file's {meta['eval_hvg']:,} most variable genes (scanpy, seurat flavor)"
    elif meta.get("eval_panel"):
        held = f"a random {100 * meta['eval_panel']:g}% of each file's genes"
    else:
        return "the files as they are"
    completed = ("; each cell completed (absent genes: the set's mean training cell) before the language "
                 "model and the read-out read it; the read-out-alone table reads cells as they are"
                 if meta.get("complete_input") else "")
    return held + completed


def render_markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    reference = meta["variants"][0]
    lines = ["# Read-out variants: paired bootstrap of macro-F1, language model fixed", "",
             f"- command: `{meta['command']}`", f"- date: {meta['date']}",
             f"- checkpoint: `{meta['checkpoint']}` (its language model; every read-out fitted on "
             f"`{meta['fit_split']}`), evaluated on `{meta['split']}`, own valid phrasings, seed {meta['seed']}; "
             f"shared data: {meta['shared']}",
             f"- reference variant: `{reference}`; `z` divides by each gene's pooled standard deviation "
             f"(floor {meta['sd_floor']})",
             f"- evaluated files: {evaluated_files(meta)}", "",
             "## Read-out alone (argmax within the set's labels), macro-F1", "",
             "| dataset | " + " | ".join(f"`{v}`" for v in meta["variants"]) + " |",
             "| --- |" + " --- |" * len(meta["variants"])]
    for name in report["readout_alone"][reference]:
        lines.append(f"| {name} | " + " | ".join(f"{report['readout_alone'][v][name]:.3f}" for v in meta["variants"]) + " |")
    for variant, result in report["candidates"].items():
        lines += ["", f"## `{variant}` against `{reference}` (language model + read-out, as `evaluate` answers)", "",
                  "| dataset | n | reference F1 | variant F1 | difference [95% interval] | share of draws ahead |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for name, r in result["datasets"].items():
            lines.append(f"| {name} | {r['n_cells']} | {r['reference_f1']:.3f} | {r['candidate_f1']:.3f} | "
                         f"{r['delta']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}] | {r['share_a_ahead']:.2f} |")
        m = result["mean_over_sets"]
        lines.append(f"| mean over sets | {m['n_cells']} | | | {m['delta']:+.3f} [{m['low']:+.3f}, {m['high']:+.3f}] | "
                     f"{m['share_a_ahead']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    specs = split_specs(args.datasets)
    cmd = [sys.executable.rsplit("/", 1)[-1], *sys.argv] if argv is None else ["readout_variants.py", *argv]
    with tempfile.TemporaryDirectory(prefix="readout_panel_") as panel_dir:  # the --eval-panel copies
        return run(args, cmd, specs, Path(panel_dir))


def run(args: argparse.Namespace, cmd: list[str], specs: list[Any], panel_dir: Path) -> int:
    loaded = load_checkpoint(args.checkpoint, "cpu", precision="float32")
    weight = loaded.readout.answer_weight if loaded.readout is not None else 1.0
    order = list(loaded.label_sets)  # fit_blocks yields the label sets in the checkpoint's order
    specs = sorted((s for s in specs if s.name in loaded.label_sets), key=lambda s: order.index(s.name))
    names = [s.name for s in specs]
    fit = fit_blocks(loaded, specs, args.fit_split)
    panel_fit = fit_blocks(loaded, specs, args.fit_split, panel_copies=1, seed=args.seed) \
        if any(v.startswith("panel:") for v in args.variants) else None
    hvg_fit = fit_blocks(loaded, specs, args.fit_split, seed=args.seed, hvg_copies=1) \
        if any(v.startswith("hvgpanel:") for v in args.variants) else None
    if args.eval_panel is not None:  # the read-outs are fitted on the full files, evaluated on fewer genes
        specs = [with_panel(spec, args.eval_panel, args.seed, panel_dir) for spec in specs]
    if args.eval_hvg is not None:
        specs = [with_hvg(spec, args.eval_hvg, panel_dir) for spec in specs]
    held = fit_blocks(loaded, specs, args.split)
    panels = {}  # per set: the evaluated file's genes, and the set's mean cell on the fit split
    completes = args.complete_input or any(v.split(":")[0] in ("impute", "fill") for v in args.variants)
    for name, spec, (x, _, _) in zip(names, specs, fit if completes else []):
        present = torch.zeros(len(loaded.vocab), dtype=torch.bool)
        present[torch.from_numpy(align_to_vocab(read_h5ad(spec.path), loaded.vocab).matched)] = True
        panels[name] = (present, torch.from_numpy(x.mean(0)).float())
        logger.info("%s: the evaluated file has %d of %d vocabulary genes", name, int(present.sum()), len(present))
    readouts, fitted = {}, {}
    for variant in args.variants:
        scaling, l2, *rest = variant.split(":")
        fit_as = "raw" if scaling in ("panel", "hvgpanel", "impute", "fill") else scaling
        key = (scaling if scaling in ("panel", "hvgpanel") else fit_as, l2)
        if key not in fitted:  # variants differing in weight or imputation only share one fit
            blocks = {"panel": panel_fit, "hvgpanel": hvg_fit}.get(scaling, fit)
            fitted[key] = fit_variant(blocks, len(loaded.vocab), fit_as, float(l2), args.sd_floor, weight)
            logger.info("fitted %s:%s (train accuracy %.3f)", *key, fitted[key].info["train_accuracy"])
        base = fitted[key]
        w = float(rest[0]) if rest else weight
        prior = float(rest[1]) if len(rest) > 1 else 0.0
        # a per-label constant added to the read-out's logits reaches the combined score times w
        bias = base.bias - prior / w * label_log_prior(fit, base.labels) if prior else base.bias
        readouts[variant] = ImputingReadout(base.labels, base.weight, bias, w, base.info,
                                            rescale=scaling == "impute") \
            if scaling in ("impute", "fill") else Readout(base.labels, base.weight, bias, w, base.info)
    del fit, panel_fit, hvg_fit

    recorded_calls = {}
    results: dict[str, dict[str, Any]] = {v: {} for v in args.variants}
    for spec in specs:
        def answers() -> dict[str, Any]:
            return cells_of(evaluate(loaded, spec.path, spec.split_path, TASK_CODE[spec.task], spec.label_key,
                                     seed=args.seed, split=args.split, keep_predictions=True))

        if args.complete_input:  # an instance attribute over the class's own method, popped below
            present, mean = panels[spec.name]
            loaded.model.normalize = lambda counts, own=type(loaded.model).normalize.__get__(loaded.model): \
                complete_panel(own(counts), present.to(counts.device), mean.to(counts.device), True)
        recorder = Recorder(loaded.model)
        recorder.record()
        for i, variant in enumerate(args.variants):
            loaded.readout = readouts[variant]
            prepare(loaded.readout, spec.name, panels)
            if i >= 1:  # every variant after the first plays the first one's record back
                recorder.replay()
            results[variant][spec.name] = answers()
        # The replay must be faithful: the first variant played back gives its recorded answers.
        loaded.readout = readouts[args.variants[0]]
        prepare(loaded.readout, spec.name, panels)
        recorder.replay()
        if answers()["predicted"] != results[args.variants[0]][spec.name]["predicted"]:
            raise RuntimeError(f"{spec.name}: replaying the recorded model calls changed the answers")
        recorder.restore()
        loaded.model.__dict__.pop("normalize", None)
        recorded_calls[spec.name] = len(recorder.calls)
        logger.info("%s: %s", spec.name, ", ".join(f"{v} {results[v][spec.name]['macro_f1']:.3f}" for v in args.variants))

    reference = args.variants[0]
    report: dict[str, Any] = {
        "meta": {**run_meta(shlex.join(cmd)), "checkpoint": str(args.checkpoint), "split": args.split,
                 "eval_panel": args.eval_panel, "eval_hvg": args.eval_hvg, "complete_input": args.complete_input,
                 "fit_split": args.fit_split, "seed": args.seed, "sd_floor": args.sd_floor,
                 "variants": args.variants, "shared": str(shared_root()), "recorded_calls": recorded_calls},
        "readout_alone": {v: readout_alone_f1(r, held, names, panels) for v, r in readouts.items()},
        "fit_info": {v: r.info for v, r in readouts.items()},
        "candidates": {v: compare(results[reference], results[v], args.seed) for v in args.variants[1:]},
    }
    path = write_report(report, render_markdown(report), args.out_dir, "readout_variants")
    logger.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
