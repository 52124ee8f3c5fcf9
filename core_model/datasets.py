"""The shared datasets: catalog entries, canonical splits, and per-cell prompt fields.

Shared data is read by path at run time (never copied into the project): `INSTRUCTCELL_SHARED`,
else a `shared/` folder beside the current directory or beside the source checkout.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np

from .context import canonical_species, canonical_tissue
from .errors import InputFileError, LabelKeyError
from .readers import cell_file_format

# The catalog does not name the drug of a drug-response set; the study does.
KNOWN_DRUGS = {"aissa2021_pc9_erlotinib": "erlotinib"}
TASK_OF_CATALOG = {"cta": "annotation", "dsp": "drug_response"}
PROMPT_FIELDS = ("species", "tissue", "sequencing_method", "drug")
OBS_COLUMNS = {"species": ("species", "organism")}  # obs columns a field is read from, first found
CANONICAL = {"species": canonical_species, "tissue": canonical_tissue}


def shared_root() -> Path:
    """Directory holding the shared data (`data/catalog.json` inside)."""
    env = os.environ.get("INSTRUCTCELL_SHARED")
    candidates = [Path(env)] if env else []
    candidates += [Path.cwd().parent / "shared", Path(__file__).resolve().parents[2] / "shared"]
    for path in candidates:
        if (path / "data" / "catalog.json").is_file():
            return path
    raise InputFileError(
        "shared data not found: set INSTRUCTCELL_SHARED to the folder that holds data/catalog.json "
        f"(looked in {', '.join(str(c) for c in candidates)})"
    )


@dataclass(frozen=True)
class DatasetSpec:
    """One labelled dataset usable for training or evaluation."""

    name: str
    task: str  # "annotation" | "drug_response"
    path: Path
    label_key: str
    split_path: Path | None = None
    tissue: str = ""
    species: str = ""
    sequencing_method: str = ""
    drug: str = ""
    classes: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_catalog_entry(cls, entry: dict[str, Any], data_dir: Path) -> DatasetSpec:
        species = entry.get("species") or []
        return cls(
            name=entry["name"],
            task=TASK_OF_CATALOG.get(entry["task"], entry["task"]),
            path=data_dir / entry["path"],
            label_key=entry.get("label") or "",
            split_path=data_dir / entry["split"] if entry.get("split") else None,
            tissue=entry.get("tissue", ""),
            species=" and ".join(species) if isinstance(species, list) else str(species),
            sequencing_method=entry.get("sequencing_method", ""),
            drug=entry.get("drug") or KNOWN_DRUGS.get(entry["name"], ""),
            classes=tuple(sorted(entry.get("classes", {}))),
        )


def load_catalog(root: Path | None = None, tasks: tuple[str, ...] = ("annotation", "drug_response")) -> list[DatasetSpec]:
    """Catalog entries of the given tasks, in catalog order."""
    data_dir = (root or shared_root()) / "data"
    entries = json.loads((data_dir / "catalog.json").read_text())
    specs = [DatasetSpec.from_catalog_entry(e, data_dir) for e in entries]
    return [s for s in specs if s.task in tasks]


USER_ENTRY_HINT = ('each entry needs text fields "name", "task" ("cta" or "dsp"), "path" (.h5ad), "label" (its obs '
                   'column) and "split" (a JSON file {"train": [obs_names], "valid": [...], "test": [...]}; '
                   '`instructcell make-split` writes one), and "drug" for a dsp set; paths are read from the '
                   'catalog\'s folder')


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def load_user_catalog(path: str | os.PathLike) -> list[DatasetSpec]:
    """A user's own datasets, in the shared catalog's format (a JSON list of entries).

    Each entry needs ``name``, ``task`` ("cta" or "dsp"), ``path`` (.h5ad), ``label`` (the obs
    column) and ``split`` (split JSON); a drug-response entry also names its ``drug``. Optional:
    ``tissue``, ``species``, ``sequencing_method``. Relative paths are read from the catalog file's
    folder. Any labels work: the label set is read from the data.
    """
    path = Path(path)
    try:
        entries = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputFileError(f"cannot read dataset catalog {path}: {exc}") from exc
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise InputFileError(f"dataset catalog {path} must be a JSON list of objects; {USER_ENTRY_HINT}")
    if not entries:  # an empty list would otherwise train on nothing of the user's without a word
        raise InputFileError(f"dataset catalog {path} holds no entries; {USER_ENTRY_HINT}")
    specs = []
    for i, entry in enumerate(entries):
        # Text fields only: a list or number here would fail later, deep in training, with a traceback.
        missing = [k for k in ("name", "path", "label", "split") if not _is_text(entry.get(k))]
        if not _is_text(entry.get("task")) or entry["task"] not in TASK_OF_CATALOG:
            missing.insert(1, "task (cta or dsp)")
        if entry.get("task") == "dsp" and not _is_text(entry.get("drug")):
            missing.append("drug")
        if missing:
            raise InputFileError(f"dataset catalog {path}, entry {i}: missing or invalid "
                                 f"{', '.join(missing)}; {USER_ENTRY_HINT}")
        spec = DatasetSpec.from_catalog_entry(entry, path.parent)
        for file in (spec.path, spec.split_path):
            if not Path(file).is_file():
                raise InputFileError(f"dataset catalog {path}, entry {entry['name']!r}: no file {file}")
        if cell_file_format(spec.path) != "h5ad":  # a count table, Cell Ranger's .h5, a loom file ...
            raise InputFileError(f"dataset catalog {path}, entry {entry['name']!r}: {spec.path.name} is not an .h5ad; "
                                 "training reads .h5ad files: write one with `instructcell convert --data "
                                 f"{spec.path.name} [--obs-table METADATA] --out {spec.path.stem.split('.')[0]}.h5ad`")
        specs.append(spec)
    return specs


def read_split(path: str | os.PathLike) -> dict[str, list[str]]:
    """A split file: {"train": [obs_names], "valid": [...], "test": [...]}."""
    try:
        split = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputFileError(f"cannot read split file {path}: {exc}") from exc
    if not isinstance(split, dict) or not all(isinstance(v, list) for v in split.values()):
        raise InputFileError(f"split file {path} must map split names to lists of obs_names")
    return split


def split_names(path: str | os.PathLike, split: str) -> list[str]:
    """obs_names of `split` in a split file; several splits joined by '+' ("train+valid") give
    their cells in that order."""
    table = read_split(path)
    unknown = [part for part in split.split("+") if part not in table]
    if unknown:
        raise InputFileError(f"split file {path} has no split {unknown[0]!r}; it has {sorted(table)}")
    return [name for part in split.split("+") for name in table[part]]


def subset_by_names(adata: ad.AnnData, names: list[str], what: str) -> ad.AnnData:
    """Rows of `adata` named `names`, in that order; refuses names the file does not hold."""
    index = adata.obs_names.get_indexer(names)
    if (index < 0).any():
        missing = [n for n, i in zip(names, index) if i < 0][:5]
        raise InputFileError(f"{(index < 0).sum()} cells of the {what} split are not in the data, e.g. {missing}; "
                             f"the split file must list the file's obs_names, e.g. {list(adata.obs_names[:2])}")
    return adata[index]


def prompt_fields(adata: ad.AnnData, spec: DatasetSpec | None = None, **overrides: str) -> list[dict[str, str]]:
    """Per-cell prompt fields (species, tissue, sequencing method, drug): explicit overrides, then
    the cell's own `obs` columns (species also from CELLxGENE's `organism`), then the dataset's
    catalog entry. Species and tissue are read as the training sets name them ('Homo sapiens' ->
    'human', 'PBMC' -> 'peripheral blood'; core_model/context.py)."""
    n = adata.n_obs
    columns: dict[str, np.ndarray] = {}
    for key in PROMPT_FIELDS:
        column = next((c for c in OBS_COLUMNS.get(key, (key,)) if c in adata.obs.columns), None)
        if overrides.get(key):
            columns[key] = np.full(n, overrides[key], dtype=object)
        elif column is not None:
            columns[key] = adata.obs[column].astype(str).to_numpy()
        else:
            columns[key] = np.full(n, getattr(spec, key, "") if spec else "", dtype=object)
        if key in CANONICAL:
            values, inverse = np.unique(columns[key].astype(str), return_inverse=True)
            columns[key] = np.array([CANONICAL[key](v) for v in values], dtype=object)[inverse]
    return [{k: str(columns[k][i]) for k in PROMPT_FIELDS} for i in range(n)]


def labels_of(adata: ad.AnnData, key: str) -> np.ndarray:
    if key not in adata.obs.columns:
        raise LabelKeyError(f"label column {key!r} not in obs; available: {sorted(adata.obs.columns)}")
    return adata.obs[key].astype(str).to_numpy()
