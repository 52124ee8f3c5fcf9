"""Multi-dataset training of the cell language model: a plain, seeded, resumable loop.

Stage 1 (cheap, no language model): the cell encoder learns to separate each dataset's labels
through an auxiliary linear head on the pooled queries. Stage 2: the full prompt runs through the
frozen LM and the encoder + projection learn to make it answer with the label text, for random
phrasings of our instruction bank, with and without candidate options. The auxiliary loss stays
on (down-weighted) so the encoder keeps its separation while the LM path is learned.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import anchor, distill, warm_start
from .backbone import load_backbone
from .cell_encoder import sparse_log_normalize
from .checkpoint import LoadedModel, save_checkpoint
from .config import BackboneConfig, CellEncoderConfig, ModelConfig
from .corpus import SplitData, dense_rows, load_split
from .datasets import DatasetSpec, load_catalog, read_split, split_names, subset_by_names
from .errors import InstructCellError
from .gene_panels import N_TOP_RANGE
from .instructions import format_choices, has_choices, load_bank, render
from .io import file_sha256, read_h5ad
from .model import CellLanguageModel
from .precision import resolve_device
from .readout_train import train_readout
from .replay import REPLAY_SHARE, inherited_sets, is_replayed, replay_splits
from .reference_fit import fit_checkpoint_reference
from .train_state import check_resumable, save_state
from .training_data import AuxHead, TrainingData
from .vocab import build_vocab, read_vocab

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (recorded in the checkpoint)."""

    datasets: tuple[str, ...] = ()  # names from the catalog; empty = every annotation + drug set
    n_hvg: int = 2000
    seed: int = 0
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    hidden_dim: int = 384
    dim: int = 256
    n_queries: int = 8
    n_layers: int = 2
    encoder_epochs: int = 25
    encoder_batch: int = 128
    encoder_lr: float = 1e-3
    lm_steps: int = 600
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 0.01
    aux_weight: float = 0.5
    train_lm: bool = False  # also fine-tune the whole backbone (full tuning)
    lora_rank: int = 8  # low-rank adapters in the frozen backbone's attention; 0 = none
    gene_keep: float = 0.85  # per-entry keep probability (dropout augmentation)
    panel_drop_prob: float = 0.3  # chance a batch sees only a random subset of the genes
    # Chance a batch sees only its dataset's 500-3,000 most variable genes, as a file cut to HVGs
    # in a scanpy workflow shows them (unlike a random panel, it keeps the informative genes and
    # drops the housekeeping ones the normalization leaned on). 0: never (the shipped recipe).
    hvg_panel_prob: float = 0.0
    valid_cells: int = 48  # per dataset, for the end-of-training check
    save_every: int = 200
    init_from: str | None = None  # a checkpoint directory: start from its weights, skip stage 1
    # with init_from: replay the start's reference cells of the label sets this run has no data for
    # (core_model/replay.py), so fine-tuning on a user's sets alone forgets them less
    replay: bool = True
    replay_share: float = REPLAY_SHARE  # of the LM's batches, for the replayed sets together
    # Splits the weights are fitted on. "train+valid" is the final refit once settings were chosen
    # on valid (the benchmark's baselines are fitted on train+valid too); the end-of-run valid
    # check is then skipped, since it would score cells the model was fitted on.
    fit_splits: str = "train"
    # A gene_vocab.json (or a checkpoint directory holding one) to use instead of building the
    # vocabulary from the data: keeps a retrained model on the genes, and in the gene order, that
    # a shipped generator decodes into.
    vocab_from: str | None = None
    # Datasets are drawn for a batch with probability proportional to cells**dataset_alpha: 0.5
    # favours small sets, 1.0 gives every train cell the same number of passes.
    dataset_alpha: float = 0.5
    linear_skip: bool = False  # see CellEncoderConfig.linear_skip
    # Stage 2 leaves the encoder as stage 1 trained it (eval mode, no auxiliary loss) and fits only
    # the projection, token scale and adapters: tests whether stage 2's LM loss erodes what
    # stage 1's classifier made separable (benchmarks/results/encoder_probe_run8.md).
    freeze_encoder: bool = False
    # Weight of a loss that ranks the set's labels as inference scores them (cross-entropy over
    # each label's decisive-token log-likelihood, `score_candidates`) beside the LM's next-token
    # loss, which never plays the labels against each other. 0: off (the shipped recipe): at 1, from
    # the shipped weights, valid macro-F1 fell 0.014 [-0.033, -0.001] on average over the sets
    # (benchmarks/results/compare_checkpoints_valid_rank_loss_fixed.md, 2026-12-08).
    rank_weight: float = 0.0
    # With init_from: weight of a penalty pulling the weights stage 2 trains back toward the start's
    # (core_model/anchor.py, L2-SP), so fine-tuning forgets the sets it has no data for less. 0: off.
    anchor_weight: float = 0.0
    # With init_from and replay: weight of the start's answers on the replayed cells (core_model/
    # distill.py), its candidate distribution distilled beside the replayed labels. 0: off.
    distill_weight: float = 0.0

    def __post_init__(self) -> None:
        # Checked here, not at the first draw, so a bad value fails before minutes of data loading.
        if not 0.0 <= self.dataset_alpha <= 1.0:
            raise ValueError(f"dataset_alpha must lie in [0, 1], got {self.dataset_alpha}")
        if self.rank_weight < 0:
            raise ValueError(f"rank_weight must not be negative, got {self.rank_weight}")
        if self.anchor_weight < 0:
            raise ValueError(f"anchor_weight must not be negative, got {self.anchor_weight}")
        if self.anchor_weight and not self.init_from:
            raise ValueError("anchor_weight pulls toward a starting checkpoint's weights: it needs init_from")
        if self.distill_weight < 0:
            raise ValueError(f"distill_weight must not be negative, got {self.distill_weight}")
        if self.distill_weight and not (self.init_from and self.replay):
            raise ValueError("distill_weight distils a starting checkpoint's answers on the cells it replays: "
                             "it needs init_from, with replay on")
        if not 0.0 < self.replay_share < 1.0:
            raise ValueError(f"replay_share must lie strictly between 0 and 1, got {self.replay_share}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def augment(counts: sp.csr_matrix, cfg: TrainConfig, rng: np.random.Generator,
            variable: np.ndarray | None = None) -> sp.csr_matrix:
    """Random dropout of entries, and sometimes of a whole gene panel, before normalization: user
    files hold fewer genes and shallower cells than the training sets. `variable`: the dataset's
    genes, most variable first (`variable_gene_order`), for `cfg.hvg_panel_prob`."""
    counts = counts.copy()
    keep = rng.random(counts.nnz) < cfg.gene_keep
    if rng.random() < cfg.panel_drop_prob:
        panel = rng.random(counts.shape[1]) < rng.uniform(0.2, 0.8)
        keep &= panel[counts.indices]
    # Drawn only when enabled, so runs without it draw exactly what they drew before.
    if cfg.hvg_panel_prob > 0 and variable is not None and rng.random() < cfg.hvg_panel_prob:
        panel = np.zeros(counts.shape[1], dtype=bool)
        panel[variable[: int(rng.integers(N_TOP_RANGE[0], N_TOP_RANGE[1] + 1))]] = True
        keep &= panel[counts.indices]
    counts.data = counts.data * keep
    counts.eliminate_zeros()
    return counts


def train(cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False, show_progress: bool = True,
          command: str | None = None, specs: list[DatasetSpec] | None = None, device: str = "auto",
          fit_readout: bool = True) -> Path:
    """Train on the train splits, check on `valid`, write a checkpoint to `out_dir/checkpoint`.

    `specs` (datasets with a split file) replaces the shared catalog, e.g. for a user's own
    labelled sets; without it every catalog set named in `cfg.datasets` (default: all) is used.
    `device`: where both stages run ("auto": the GPU when torch sees one, as `load_model` and the
    CLI; "cpu"; "cuda"); the data stays on the CPU and each batch is moved. `fit_readout=False`
    leaves the linear read-out out of the checkpoint (it reads genes only, not these weights:
    `instructcell train-readout` fits it later, anywhere).
    """
    device = resolve_device(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.init_from and cfg.vocab_from:
        raise ValueError("--vocab-from cannot be combined with --init-from: the starting checkpoint's genes are kept")
    if specs is not None and not specs:  # not "all shared sets": the caller asked for its own, and gave none
        raise ValueError("specs is empty: pass at least one dataset, or None for the shared catalog's")
    specs = select_specs(cfg) if specs is None else specs
    start = warm_start.load_start(cfg.init_from, cfg.backbone, cfg.train_lm, out) if cfg.init_from else None
    if start is not None:
        warm_start.check_set_names(start, specs)
    vocab = start.vocab if start else _vocab(specs, cfg, out, resume)
    replayed = replay_splits(start, inherited_sets(start, specs)) if start is not None and cfg.replay else []
    data = TrainingData.build([_load_split(s, vocab, cfg.fit_splits) for s in specs] + replayed)
    model = start.model if start else new_model(cfg, data)
    aux = AuxHead(model.cfg.encoder.dim, data.n_labels)
    model.to(device)
    aux.to(device)
    # taken before a resumed run's state replaces the weights: the anchor is the start's
    anchored = anchor.snapshot(model, cfg.train_lm) if cfg.anchor_weight else None
    if cfg.distill_weight and not replayed:  # every set the start learned has data here, or it kept no cells
        log.warning("--distill-weight: this run replays no cells of the start's, so nothing is distilled")
    teacher = distill.frozen_teacher(model) if cfg.distill_weight and replayed else None
    state_path = out / "train_state.pt"
    state = torch.load(state_path, weights_only=True, map_location=device) if resume and state_path.exists() else None
    if state is not None:
        check_resumable(state, data, state_path)
    if state is not None and state["stage"] == 2:
        model.load_state_dict(state["model"], strict=False)
        if "lm" in state:
            model.lm.load_state_dict(state["lm"])
        aux.load_state_dict(state["aux"])
    elif start is not None:
        warm_start.fit_aux_head(model.encoder, aux, warm_start.sampler(data, cfg, model.cfg.target_sum, _batch))
    else:
        train_encoder(model.encoder, aux, data, cfg, model.cfg.target_sum, show_progress)
    train_language_stage(model, aux, data, cfg, out, state, show_progress, anchored, teacher)
    del teacher  # a second copy of the model, not needed past stage 2
    model.lm.requires_grad_(False)
    model.encoder.requires_grad_(True)  # a frozen encoder is frozen for stage 2 only
    valid = _validate(model, specs, vocab, cfg) if "valid" not in cfg.fit_splits.split("+") else {
        "skipped": f"the model was fitted on {cfg.fit_splits}"}
    model.to("cpu")  # checkpoints are written from, and loaded onto, the CPU
    labels = _label_sets(specs, data)  # a replayed set keeps the start's entry (merged below)
    info = {**_info(cfg, specs, valid), "command": command, "trained_on": _device_name(device)}
    if start is not None:
        labels = warm_start.merged_label_sets(start, labels)
        info["started_from"] = warm_start.provenance(start)
    loaded = LoadedModel(model, vocab, labels, info)
    save_checkpoint(loaded, out / "checkpoint")
    # The read-out beside the LM (core_model/readout.py) is fitted on the same cells; the valid
    # check above is the language model's alone.
    if fit_readout:
        train_readout(out / "checkpoint", specs, split=cfg.fit_splits, command=command, inherit_from=start,
                      replayed=replayed)
    # what a cell's typicality of its label is measured against (core_model/reference.py)
    fit_checkpoint_reference(out / "checkpoint", specs, split=cfg.fit_splits, command=command, inherit_from=start)
    (out / "valid_metrics.json").write_text(json.dumps(valid, indent=1))
    return out / "checkpoint"


def _device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return device


def new_encoder_config(cfg: TrainConfig, data: TrainingData) -> CellEncoderConfig:
    """The encoder a run from scratch builds (the gene count is the vocabulary the data is aligned to)."""
    return CellEncoderConfig(n_genes=int(data.splits[0].X.shape[1]), hidden_dim=cfg.hidden_dim, dim=cfg.dim,
                             n_queries=cfg.n_queries, n_layers=cfg.n_layers, linear_skip=cfg.linear_skip)


def new_model(cfg: TrainConfig, data: TrainingData) -> CellLanguageModel:
    """An untrained cell encoder on `cfg.backbone` (loaded offline), sized to the data's vocabulary."""
    model_cfg = ModelConfig(encoder=new_encoder_config(cfg, data), backbone=cfg.backbone, lm_trained=cfg.train_lm,
                            lora_rank=0 if cfg.train_lm else cfg.lora_rank)
    return CellLanguageModel(model_cfg, load_backbone(cfg.backbone))


def select_specs(cfg: TrainConfig) -> list[DatasetSpec]:
    specs = load_catalog()
    if cfg.datasets:
        known = {s.name: s for s in specs}
        unknown = [n for n in cfg.datasets if n not in known]
        if unknown:
            raise ValueError(f"unknown datasets {unknown}; the catalog has {sorted(known)}")
        specs = [known[n] for n in cfg.datasets]
    return specs


def _vocab(specs: list[DatasetSpec], cfg: TrainConfig, out: Path, resume: bool = False) -> list[str]:
    path = out / "gene_vocab.json"
    # Resuming: the vocabulary must not change under the weights. A fresh run into a used
    # directory builds its own: the old one may come from other data (other genes).
    if resume and path.exists():
        return json.loads(path.read_text())
    if cfg.vocab_from:
        vocab = read_vocab(cfg.vocab_from)
        path.write_text(json.dumps(vocab))
        return vocab
    sets = [_named(s, lambda s=s: subset_by_names(read_h5ad(s.path), split_names(s.split_path, cfg.fit_splits),
                                                  cfg.fit_splits))
            for s in specs]
    vocab = build_vocab(sets, cfg.n_hvg)
    path.write_text(json.dumps(vocab))
    return vocab


def _named(spec: DatasetSpec, read):
    """`read()`, with an input error naming the dataset and its file: with several sets in a run,
    "label column 'x' not in obs" alone does not say which one to fix."""
    try:
        return read()
    except InstructCellError as exc:
        raise type(exc)(f"dataset {spec.name!r} ({spec.path}): {exc}") from exc


def _load_split(spec: DatasetSpec, vocab: list[str], split: str) -> SplitData:
    return _named(spec, lambda: load_split(spec, vocab, split))


def _batch(data: TrainingData, d: int, rows: np.ndarray, target_sum: float, cfg: TrainConfig,
           rng: np.random.Generator) -> torch.Tensor:
    """Augmented, log-normalized batch as a sparse tensor (the encoder's first layer is sparse)."""
    variable = data.variable_genes(d, target_sum) if cfg.hvg_panel_prob > 0 else None
    return sparse_log_normalize(augment(data.splits[d].X[rows], cfg, rng, variable), target_sum)


def train_encoder(encoder: nn.Module, aux: AuxHead, data: TrainingData, cfg: TrainConfig, target_sum: float,
                  show: bool = False) -> None:
    """Stage 1: the encoder and the auxiliary head alone (no language model), `cfg.encoder_epochs`
    passes over the train cells. Public so `benchmarks/encoder_probe.py` can compare settings."""
    params = list(encoder.parameters()) + list(aux.parameters())
    device = params[0].device
    opt = torch.optim.AdamW(params, lr=cfg.encoder_lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    steps = int(cfg.encoder_epochs * sum(s.n_cells for s in data.splits) / cfg.encoder_batch)
    probs = data.dataset_probs(cfg.dataset_alpha, cfg.replay_share)
    encoder.train()
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.encoder_lr, total_steps=max(steps, 1))
    for _ in tqdm(range(steps), desc="stage 1 (encoder)", disable=not show):
        d = int(rng.choice(len(probs), p=probs))
        rows = data.sample(rng, d, cfg.encoder_batch)
        logits = aux(encoder(_batch(data, d, rows, target_sum, cfg, rng).to(device))) + data.mask(d).to(device)
        loss = F.cross_entropy(logits, data.targets(d, rows).to(device), label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def _prompt(template: str, fields: dict[str, str], labels: list[str], rng: random.Random) -> str:
    values = dict(fields)
    values.setdefault("cell_type", "")
    if has_choices(template):
        values["choices"] = format_choices(labels, rng)
    return render(template, values)


def train_language_stage(model: CellLanguageModel, aux: AuxHead, data: TrainingData, cfg: TrainConfig, out: Path,
                         state: dict | None, show: bool, anchored: dict[str, torch.Tensor] | None = None,
                         teacher: CellLanguageModel | None = None) -> None:
    """Stage 2: `cfg.lm_steps` steps of the LM answering in text (plus the auxiliary loss), saving
    resumable state to `out` every `cfg.save_every` steps. `anchored`: the start's weights that
    `cfg.anchor_weight` pulls toward (`anchor.snapshot`); `teacher`: the frozen start whose answers
    on replayed cells `cfg.distill_weight` distils (`distill.frozen_teacher`). Public so
    `benchmarks/train_step_time.py` can time it."""
    if cfg.anchor_weight and anchored is None:
        raise ValueError("cfg.anchor_weight is set but no anchored weights were given")
    if cfg.distill_weight and teacher is None and any(is_replayed(s) for s in data.splits):
        raise ValueError("cfg.distill_weight is set but no teacher was given")
    trainable = list(model.proj.parameters()) + [model.token_scale]
    if cfg.freeze_encoder:
        model.encoder.requires_grad_(False)
    else:
        trainable += list(model.encoder.parameters()) + list(aux.parameters())
    if cfg.train_lm:
        model.lm.requires_grad_(True)
        trainable += list(model.lm.parameters())
    else:
        for p in model.lora_parameters():
            p.requires_grad_(True)
        trainable += model.lora_parameters()
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, cfg.lm_steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.lm_steps) / cfg.lm_steps))
    )
    start = 0
    if state is not None and state["stage"] == 2:
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start = int(state["step"])
    banks = {task: load_bank(task).train for task in {s.spec.task for s in data.splits}}
    probs = data.dataset_probs(cfg.dataset_alpha, cfg.replay_share)
    model.train()
    model.lm.eval()  # no dropout in the backbone, frozen or not
    if cfg.freeze_encoder:
        model.encoder.eval()  # the LM learns to read the tokens inference will give it
    bar = tqdm(range(start, cfg.lm_steps), desc="stage 2 (LM)", disable=not show, initial=start, total=cfg.lm_steps)
    for step in bar:
        # Per-step seeds make a resumed run draw exactly what an uninterrupted one would.
        rng = np.random.default_rng([cfg.seed, step])
        prng = random.Random(cfg.seed * 1_000_003 + step)
        d = int(rng.choice(len(probs), p=probs))
        split = data.splits[d]
        rows = data.sample(rng, d, cfg.batch_size)
        template = prng.choice(banks[split.spec.task])
        labels = sorted(set(split.labels))
        texts = [model.prefix_text(_prompt(template, split.fields[r], labels, random.Random(step))) for r in rows]
        uniq = sorted(set(texts))
        index = torch.tensor([uniq.index(t) for t in texts])
        ctx = model.start(uniq, index)
        expr = _batch(data, d, rows, model.cfg.target_sum, cfg, rng).to(model.device)
        logp, mask = model.answer_logprob(ctx, expr, [str(split.labels[r]) for r in rows])
        lm_loss = -(logp.sum() / mask.sum())
        loss = lm_loss
        distilled = teacher is not None and bool(cfg.distill_weight) and is_replayed(split)
        if cfg.rank_weight or distilled:
            # answer_logprob extended ctx's cache with the cells and answers: the candidates are
            # scored after a fresh read of the prompts (memoised within the step)
            scores = model.score_candidates(model.start(uniq, index), expr, labels, decisive=True)
        if cfg.rank_weight:
            truth = torch.tensor([labels.index(str(split.labels[r])) for r in rows], device=model.device)
            loss = loss + cfg.rank_weight * F.cross_entropy(scores, truth)
        if distilled:
            taught = distill.teacher_scores(teacher, uniq, index, expr, labels)
            loss = loss + cfg.distill_weight * distill.kl_to_teacher(scores, taught)
        if not cfg.freeze_encoder:
            aux_logits = aux(model.encoder(expr)) + data.mask(d).to(model.device)
            loss = loss + cfg.aux_weight * F.cross_entropy(aux_logits, data.targets(d, rows).to(model.device))
        if cfg.anchor_weight:
            loss = loss + cfg.anchor_weight * anchor.penalty(model, anchored)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        sched.step()
        model.forget_prompts()  # memoised prompt keys/values were read with the old adapters
        bar.set_postfix(lm=f"{lm_loss.item():.3f}", set=split.spec.name[:12])
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.lm_steps:
            save_state(out, model, aux, opt, sched, step + 1, data)
    model.eval()


@torch.no_grad()
def _validate(model: CellLanguageModel, specs: list[DatasetSpec], vocab: list[str], cfg: TrainConfig) -> dict[str, Any]:
    """Candidate-scoring accuracy of the language model on a few valid cells per set, with
    valid-split phrasings."""
    results: dict[str, Any] = {}
    for spec in specs:
        # A user's split file may hold no valid cells; the weights are fitted without them, so the
        # check is skipped (and recorded) rather than failing the finished run before it is saved.
        if spec.split_path is not None and not read_split(spec.split_path).get("valid"):
            results[spec.name] = {"skipped": f"no valid cells in {spec.split_path.name}"}
            continue
        split = _load_split(spec, vocab, "valid")
        n = min(cfg.valid_cells, split.n_cells)
        rows = np.random.default_rng(cfg.seed).choice(split.n_cells, n, replace=False)
        bank = [t for t in load_bank(spec.task).valid if has_choices(t)]
        labels = sorted(set(split.labels))
        prng = random.Random(cfg.seed)
        texts = [model.prefix_text(_prompt(prng.choice(bank), split.fields[r], labels, prng)) for r in rows]
        uniq = sorted(set(texts))
        ctx = model.start(uniq, torch.tensor([uniq.index(t) for t in texts]))
        expr = model.normalize(torch.from_numpy(dense_rows(split.X, rows)).to(model.device))
        scores = model.score_candidates(ctx, expr, labels)
        pred = np.array(labels)[scores.argmax(1).cpu().numpy()]
        results[spec.name] = {"n_cells": int(n), "accuracy": float((pred == split.labels[rows]).mean())}
    return results


def _label_sets(specs: list[DatasetSpec], data: TrainingData) -> dict[str, dict[str, Any]]:
    return {
        s.spec.name: {
            "task": s.spec.task, "labels": sorted(set(s.labels)), "label_key": s.spec.label_key,
            "tissue": s.spec.tissue, "species": s.spec.species, "sequencing_method": s.spec.sequencing_method,
            "drug": s.spec.drug,
        }
        for s in data.splits if not is_replayed(s)
    }


def _info(cfg: TrainConfig, specs: list[DatasetSpec], valid: dict[str, Any]) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg = version("instructcell-agent")
    except PackageNotFoundError:
        pkg = "unknown"
    return {
        "package_version": pkg,
        "torch": torch.__version__,  # with trained_on: GPU and CPU runs differ in the last digits
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "train_config": cfg.to_dict(),
        "data": [
            {"name": s.name, "file": s.path.name, "sha256": file_sha256(s.path),
             "split": s.split_path.name if s.split_path else None,
             "split_sha256": file_sha256(s.split_path) if s.split_path else None}
            for s in specs
        ],
        "valid": valid,
    }
