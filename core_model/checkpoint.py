"""Checkpoint directories: config.json, gene_vocab.json, labels.json, weights.safetensors.

Only trained weights are stored (cell encoder, projection); the frozen backbone is identified by
name and file hash and loaded from its package. Tiny test backbones are stored too, since they
exist nowhere else. Loading is strict and pickle-free.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .backbone import load_backbone
from .config import ModelConfig
from .context import canonical_species, canonical_tissue
from .errors import CheckpointError
from .io import file_sha256, write_json_atomic
from .model import CellLanguageModel
from .precision import resolve_precision
from .readout import Readout, joins, load_readout, save_readout
from .readout_adapt import ADAPT_KEY, adapted
from .reference import Reference, load_reference, save_reference
from .temperature import DepthTerm, load_depth_terms, load_temperatures, rebind_temperatures

FORMAT_VERSION = 1
REQUIRED = ("config.json", "gene_vocab.json", "labels.json", "weights.safetensors")


@dataclass
class LoadedModel:
    """A model with what it needs to read user data: its gene vocabulary and label sets."""

    model: CellLanguageModel
    vocab: list[str]
    label_sets: dict[str, dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    readout: Readout | None = None  # the linear gene read-out beside the LM (core_model/readout.py), if fitted
    # confidence temperatures fitted on held-out cells, by mode (core_model/temperature.py); {} = none
    temperatures: dict[str, float] = field(default_factory=dict)
    # training cells kept per label, what a cell's typicality is measured against (core_model/reference.py)
    reference: Reference | None = None
    # per mode, how the temperature grows in cells with few detected genes (core_model/temperature_depth.py)
    temperature_depth: dict[str, DepthTerm] = field(default_factory=dict)
    _adapted: dict[bytes, tuple[Readout, Readout]] = field(default_factory=dict, repr=False)

    def temperature(self, readout: Readout | None, labels: Sequence[str] | None = None) -> float:
        """What answer scores over `labels` are divided by before the softmax that gives
        confidences: the fitted temperature of answers the read-out joins (`readout` given and
        covering `labels`; any labels when None) or of the language model alone; 1 if none, and
        for strings the checkpoint never learned (the temperatures were fitted on learned labels)."""
        mode = self._temperature_mode(readout, labels)
        return 1.0 if mode is None else self.temperatures.get(mode, 1.0)

    def cell_temperatures(self, readout: Readout | None, labels: Sequence[str] | None, genes: np.ndarray) -> np.ndarray:
        """`temperature` per cell, times the mode's depth term at each cell's detected genes where
        one was fitted with that temperature (shallow cells get a higher one)."""
        out = np.full(len(genes), self.temperature(readout, labels))
        term = self.depth_term(readout, labels)
        return out if term is None else out * term.factors(genes)

    def depth_term(self, readout: Readout | None, labels: Sequence[str] | None) -> DepthTerm | None:
        """The depth term `cell_temperatures` applies (None: every cell gets `temperature`)."""
        mode = self._temperature_mode(readout, labels)
        return self.temperature_depth.get(mode) if mode in self.temperatures else None

    def _temperature_mode(self, readout: Readout | None, labels: Sequence[str] | None) -> str | None:
        """"readout" or "lm_alone" (which temperature applies); None for labels never learned."""
        if labels is not None and not set(labels) <= {l for ls in self.label_lists for l in ls}:
            return None
        joined = readout is not None and (labels is None or joins(readout, labels))
        return "readout" if joined else "lm_alone"

    def readout_for(self, matched: np.ndarray) -> Readout | None:
        """The read-out as it answers a file holding the vocabulary genes at positions `matched`
        (its weight per label set taken from its curve at the file's gene coverage; re-centred for
        those genes where the read-out says so, core_model/readout_adapt.py), or None."""
        if self.readout is None:
            return None
        present = torch.zeros(len(self.vocab), dtype=torch.bool)
        present[torch.as_tensor(np.asarray(matched, dtype=np.int64))] = True
        sets = {name: e["labels"] for name, e in self.label_sets.items()}
        readout = self.readout
        if readout.info.get(ADAPT_KEY) and self.reference is not None:
            # one fit per gene panel: a file answered in chunks (the MCP server) reads the same genes
            key = present.numpy().tobytes()
            source, fitted = self._adapted.get(key, (None, None))
            if source is not readout:  # a read-out swapped in since (benchmarks do) is fitted anew
                fitted = adapted(readout, self.reference, present.numpy(), sets, float(self.model.cfg.target_sum))
                self._adapted.clear()  # one panel at a time is the common case; keep memory flat
                self._adapted[key] = (readout, fitted)
            readout = fitted
        return readout.for_genes(present, sets)

    def label_set(self, name: str) -> dict[str, Any]:
        if name not in self.label_sets:
            raise CheckpointError(f"no label set {name!r}; this checkpoint knows {sorted(self.label_sets)}")
        return self.label_sets[name]

    @property
    def label_lists(self) -> list[list[str]]:
        """Every learned label set's labels (what the read-out's softmax was trained within)."""
        return [list(entry["labels"]) for entry in self.label_sets.values()]

    def labels_for_task(self, task: str) -> list[str]:
        """All labels of a task across the checkpoint's datasets, first spelling of each kept."""
        out: list[str] = []
        for entry in self.label_sets.values():
            if entry["task"] == task:
                out.extend(l for l in entry["labels"] if l not in out)
        return out

    def labels_for_context(self, task: str, species: str = "", tissue: str = "") -> list[str]:
        """The labels of `task` that this checkpoint learned for cells of this species and tissue.

        Free answers are decoded within this list, so a pancreas cell is never named with a
        blood-cell label learned from another set. Empty or unknown context (no label set of the
        task matches it) gives every label of the task.
        """
        out: list[str] = []
        for name in self.label_sets_for_context(task, species, tissue):
            out.extend(l for l in self.label_sets[name]["labels"] if l not in out)
        return out or self.labels_for_task(task)

    def label_sets_for_context(self, task: str, species: str = "", tissue: str = "") -> list[str]:
        """Names of the label sets of `task` learned from cells of this species and tissue (an
        empty field matches every set; an empty list means the checkpoint never saw this context).

        A tissue matches a set whose tissue contains all its words, so 'blood' finds the
        'peripheral blood' sets and 'immune' the 'immune (spleen/marrow)' one."""
        wanted_species, wanted_tissue = _words(canonical_species(species)), set(_words(canonical_tissue(tissue)))
        names = []
        for name, entry in self.label_sets.items():
            if entry["task"] != task:
                continue
            if wanted_tissue and not wanted_tissue <= set(_words(entry.get("tissue", ""))):
                continue
            if wanted_species and not set(wanted_species) & set(_words(entry.get("species", ""))):
                continue
            names.append(name)
        return names

    def label_tissues(self, task: str) -> dict[str, str]:
        """Each learned label of `task` -> the tissue of the sets that taught it ('pancreas /
        peripheral blood' for a label learned in both)."""
        where: dict[str, set[str]] = {}
        for entry in self.label_sets.values():
            if entry["task"] == task:
                for label in entry["labels"]:
                    where.setdefault(str(label), set()).add(str(entry.get("tissue") or "?"))
        return {label: " / ".join(sorted(tissues)) for label, tissues in where.items()}

    def known_contexts(self, task: str) -> list[str]:
        """'species / tissue' of every label set of `task`, for messages."""
        seen = []
        for entry in self.label_sets.values():
            if entry["task"] == task:
                item = f"{entry.get('species', '') or '?'} / {entry.get('tissue', '') or '?'}"
                if item not in seen:
                    seen.append(item)
        return seen

    def labels_for_cells(self, task: str, fields: list[dict[str, str]]) -> list[list[str]] | None:
        """`labels_for_context` of each cell's prompt fields (one list object per distinct context);
        None when the checkpoint learned no labels for `task` at all (answers are then free text)."""
        if not self.labels_for_task(task):
            return None
        cache: dict[tuple[str, str], list[str]] = {}
        out = []
        for f in fields:
            key = (f.get("species", ""), f.get("tissue", ""))
            if key not in cache:
                cache[key] = self.labels_for_context(task, *key)
            out.append(cache[key])
        return out


def _words(text: str) -> list[str]:
    """Lower-case words of a context field ('human and mouse' -> ['human', 'mouse'])."""
    for sep in ",/()":
        text = text.replace(sep, " ")
    return [w for w in text.casefold().split() if w != "and"]


def save_checkpoint(loaded: LoadedModel, out_dir: str | os.PathLike) -> Path:
    """Write `loaded` to `out_dir` atomically (a temporary directory renamed into place)."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        model = loaded.model
        config = {"format_version": FORMAT_VERSION, "model": model.cfg.to_dict(), **loaded.info}
        config["model"]["backbone"]["sha256"] = model.backbone.sha256
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        (tmp / "gene_vocab.json").write_text(json.dumps(loaded.vocab))
        (tmp / "labels.json").write_text(json.dumps(loaded.label_sets, indent=1))
        save_file({k: v.contiguous() for k, v in model.trainable_state_dict().items()}, str(tmp / "weights.safetensors"))
        if model.cfg.backbone.kind == "tiny" or model.cfg.lm_trained:
            # Plain backbone names (LoRA wrappers unwrapped): the backbone is rebuilt and loaded
            # before adapters are injected; the adapters themselves live in weights.safetensors.
            state = {k.replace(".base.", "."): v.contiguous() for k, v in model.lm.state_dict().items()
                     if k != "lm_head.weight" and ".lora_" not in k}
            save_file(state, str(tmp / "backbone.safetensors"))
        if loaded.readout is not None:
            save_readout(tmp, loaded.readout, loaded.vocab)
        if loaded.reference is not None:
            save_reference(tmp, loaded.reference, loaded.vocab)
        # mkdtemp makes a private directory; a checkpoint is meant to be shared and shipped.
        os.chmod(tmp, 0o755)
        for item in tmp.iterdir():
            os.chmod(item, 0o644)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def store_weights_as(checkpoint_dir: str | os.PathLike, dtype: str = "float16",
                     command: str | None = None) -> dict[str, str | None]:
    """Rewrite weights.safetensors with its float tensors in `dtype`, in place and atomically.

    Shipping size: the trained weights (8M parameters for the default checkpoint) take 32 MB in
    float32 and 16 MB in float16. Loading casts them back to the model's float32 parameters, so
    only the stored values are rounded (relative error ~5e-4). config.json records the storage
    dtype and the sha256 of the file before and after.
    """
    if dtype not in ("float16", "bfloat16", "float32"):
        raise ValueError(f"dtype must be float16, bfloat16 or float32, got {dtype!r}")
    root = Path(checkpoint_dir)
    path, config_path = root / "weights.safetensors", root / "config.json"
    before = file_sha256(path)
    target = getattr(torch, dtype)
    state = {k: (v.to(target) if v.is_floating_point() else v).contiguous() for k, v in load_file(str(path)).items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp))
    os.chmod(tmp, 0o644)  # shipped files must be readable by everyone
    os.replace(tmp, path)
    record = {"dtype": dtype, "sha256_before": before, "sha256_after": file_sha256(path), "command": command}
    config = json.loads(config_path.read_text())
    config["weights_storage"] = record
    write_json_atomic(config, config_path)
    return record


GENE_INPUT_WEIGHT = "encoder.gene_proj.weight"  # (hidden, n_genes): the one tensor indexed by gene


def reorder_genes(checkpoint_dir: str | os.PathLike, vocab: list[str], command: str | None = None) -> dict[str, str | None]:
    """Put a checkpoint's genes in the order of `vocab` (the same genes), in place and atomically.

    Only the encoder's first layer, the read-out and the reference cells read genes, one column per
    gene, so permuting their columns with the vocabulary leaves every answer unchanged. Use: a retrained
    cell model whose vocabulary holds the same genes as the shipped generator's, in another order,
    can then carry that generator (which is bound to the exact gene order it decodes into).
    """
    root = Path(checkpoint_dir)
    old = json.loads((root / "gene_vocab.json").read_text())
    if sorted(old) != sorted(vocab) or len(set(vocab)) != len(vocab):
        extra, missing = sorted(set(vocab) - set(old))[:5], sorted(set(old) - set(vocab))[:5]
        raise CheckpointError(f"{root}: the new order must hold exactly the checkpoint's genes "
                              f"(not in the checkpoint: {extra}; left out: {missing}; or duplicates)")
    # Weights and vocabulary must change together: edit a copy of the directory, then swap it in.
    work = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}-reorder-"))
    shutil.rmtree(work)
    shutil.copytree(root, work)
    try:
        path = work / "weights.safetensors"
        before = file_sha256(path)
        state = load_file(str(path))
        position = {g: i for i, g in enumerate(old)}
        state[GENE_INPUT_WEIGHT] = state[GENE_INPUT_WEIGHT][:, [position[g] for g in vocab]].contiguous()
        save_file(state, str(path))
        (work / "gene_vocab.json").write_text(json.dumps(vocab))
        readout = load_readout(work, old)
        if readout is not None:  # its weight columns and mean cells are over genes too
            readout.permute_genes([position[g] for g in vocab])
            save_readout(work, readout, vocab)
        reference = load_reference(work, old)
        if reference is not None:
            reference.permute_genes([position[g] for g in vocab])
            save_reference(work, reference, vocab)
        rebind_temperatures(work, before)  # same answers, so the same confidences
        record = {"sha256_before": before, "sha256_after": file_sha256(path), "command": command}
        config = json.loads((work / "config.json").read_text())
        config["genes_reordered"] = record
        (work / "config.json").write_text(json.dumps(config, indent=1))
        for item in work.iterdir():
            if item.is_file():
                os.chmod(item, 0o644)
        old_dir = root.with_name(f".{root.name}-replaced")
        os.replace(root, old_dir)
        os.replace(work, root)
        shutil.rmtree(old_dir)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return record


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu",
                    precision: str = "float32") -> LoadedModel:
    """Rebuild a model from a checkpoint directory (strict: every trained tensor must match).

    `precision` sets the backbone LM's compute dtype (`core_model/precision.py`); the trained
    cell encoder always runs in float32. Training needs float32.
    """
    lm_dtype = resolve_precision(precision, device)
    root = Path(path)
    missing = [name for name in REQUIRED if not (root / name).is_file()]
    if missing:
        raise CheckpointError(f"{root} is not a checkpoint directory: missing {', '.join(missing)}")
    config = json.loads((root / "config.json").read_text())
    if config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{root}: checkpoint format {config.get('format_version')} is not {FORMAT_VERSION}")
    cfg = ModelConfig.from_dict(config.pop("model"))
    backbone = load_backbone(cfg.backbone)
    if (cfg.backbone.kind == "tiny" or cfg.lm_trained) and not (root / "backbone.safetensors").is_file():
        raise CheckpointError(f"{root} lacks backbone.safetensors, which this model's config requires")
    if cfg.backbone.kind == "tiny" or cfg.lm_trained:
        result = backbone.model.load_state_dict(load_file(str(root / "backbone.safetensors")), strict=False)
        if set(result.missing_keys) - {"lm_head.weight"} or result.unexpected_keys:
            raise CheckpointError(f"{root}/backbone.safetensors does not fit the tiny backbone: {result}")
        backbone.model.tie_weights()
    model = CellLanguageModel(cfg, backbone)
    state = load_file(str(root / "weights.safetensors"))
    expected = set(model.trainable_state_dict())
    if set(state) != expected:
        diff = sorted(set(state) ^ expected)[:5]
        raise CheckpointError(f"{root}/weights.safetensors does not match the model config (e.g. {diff})")
    model.load_state_dict(state, strict=False)
    vocab = json.loads((root / "gene_vocab.json").read_text())
    if len(vocab) != cfg.encoder.n_genes:
        raise CheckpointError(f"{root}: gene_vocab.json has {len(vocab)} genes, config says {cfg.encoder.n_genes}")
    labels = json.loads((root / "labels.json").read_text())
    model = model.to(device).eval()
    model.use_lm_dtype(lm_dtype)
    readout = load_readout(root, vocab)
    return LoadedModel(model, vocab, labels, config, root, readout.to(device) if readout is not None else None,
                       load_temperatures(root), load_reference(root, vocab), load_depth_terms(root))
