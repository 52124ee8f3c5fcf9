"""Helpers for the server tests: a data root with planted .h5ad files, and small limits.

Not a conftest (one conftest holds the shared fixtures); each test module builds what it needs
from these functions in its own module-scoped fixtures.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from synthetic import make_counts

from instructcell_agent.server.config import Limits, ServerConfig

N_CELLS = 240
TEST_LIMITS = dict(max_cells=600, max_explain_cells=120, max_top_k=20, max_generate=200,
                   async_threshold_cells=400, call_timeout_s=50.0, chunk_cells=64)


def make_data_root(base: Path) -> dict[str, Path]:
    """data/ with planted sets, a file over the cell limit, a non-h5ad file and escape attempts."""
    root, outside, out = base / "data", base / "outside", base / "outputs"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    paths = {"root": root, "outside": outside, "out": out}
    make_counts(N_CELLS, seed=1).write_h5ad(root / "planted.h5ad")
    make_counts(N_CELLS, seed=2).write_h5ad(root / "sub" / "planted_b.h5ad")
    make_counts(700, seed=3).write_h5ad(root / "big.h5ad")  # over max_cells, still small on disk
    make_counts(500, seed=4).write_h5ad(root / "async.h5ad")  # over async_threshold_cells only
    make_counts(8, seed=5).write_h5ad(outside / "secret.h5ad")
    (root / "notes.txt").write_text("not an h5ad\n")
    (root / "fake.h5ad").write_text("cell,gene\n1,2\n")
    (root / "folder.h5ad").mkdir()
    os.symlink(outside / "secret.h5ad", root / "escape.h5ad")  # points outside the root
    os.symlink(root / "planted.h5ad", root / "alias.h5ad")  # stays inside: allowed
    paths.update(planted=root / "planted.h5ad", planted_b=root / "sub" / "planted_b.h5ad", big=root / "big.h5ad",
                 async_file=root / "async.h5ad", secret=outside / "secret.h5ad")
    return paths


def make_config(paths: dict[str, Path], checkpoint: Path, **limit_changes) -> ServerConfig:
    # float32: the tests compare server answers with direct API calls on a float32 model
    return ServerConfig(data_roots=(paths["root"],), output_dir=paths["out"], checkpoint=checkpoint, device="cpu",
                        precision="float32", limits=Limits(**{**TEST_LIMITS, **limit_changes}))


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def output_entries(out: Path) -> list[str]:
    """Everything in the output directory, staging folders included (relative names)."""
    if not out.exists():
        return []
    return sorted(str(p.relative_to(out)) for p in out.rglob("*"))
