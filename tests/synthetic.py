"""Synthetic labelled data with planted marker genes, and tiny training settings, for the tests.

Everything is built locally (random tiny Llama, byte-level tokenizer): the suite never needs the
network, the shared data or the real backbone.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

CELL_TYPES = ("alpha", "beta", "gamma", "delta")
N_GENES = 120
MARKERS_PER_TYPE = 4


def marker_genes(cell_type: str) -> list[str]:
    i = CELL_TYPES.index(cell_type)
    return [f"GENE{j:03d}" for j in range(i * MARKERS_PER_TYPE, (i + 1) * MARKERS_PER_TYPE)]


def make_counts(n_cells: int, seed: int = 0) -> ad.AnnData:
    """Raw counts: a shared background plus strong expression of each type's planted markers."""
    rng = np.random.default_rng(seed)
    labels = np.array([CELL_TYPES[i % len(CELL_TYPES)] for i in range(n_cells)])
    rate = rng.gamma(2.0, 0.5, size=N_GENES)
    lam = np.tile(rate, (n_cells, 1))
    for i, label in enumerate(labels):
        k = CELL_TYPES.index(label)
        lam[i, k * MARKERS_PER_TYPE : (k + 1) * MARKERS_PER_TYPE] += 12.0
    counts = rng.poisson(lam * rng.uniform(0.6, 1.4, size=(n_cells, 1))).astype(np.float32)
    adata = ad.AnnData(sp.csr_matrix(counts))
    adata.obs_names = [f"cell{i:04d}" for i in range(n_cells)]
    adata.var_names = [f"GENE{j:03d}" for j in range(N_GENES)]
    adata.obs["cell_type"] = pd.Categorical(labels)
    adata.obs["species"] = "human"
    adata.obs["tissue"] = "pancreas"
    return adata


# two liver types no checkpoint of the tests learned, and 8 of each one's PanglaoDB markers that
# the other's entry does not list (the shipped table's genes)
LIVER_TYPES = ("Hepatocyte", "Cholangiocyte")


def liver_markers() -> dict[str, list[str]]:
    from instructcell_agent.interpret.markers import load_marker_db

    db = load_marker_db("panglaodb")
    hep, chol = (set(db.genes[t]["human"]) for t in ("Hepatocytes", "Cholangiocytes"))
    return {"Hepatocyte": sorted(hep - chol)[:8], "Cholangiocyte": sorted(chol - hep)[:8]}


def make_liver_like(n_cells: int, seed: int = 0) -> ad.AnnData:
    """make_counts' background genes plus the liver markers, half the cells raising each type's."""
    rng = np.random.default_rng(seed)
    markers = liver_markers()
    base = make_counts(n_cells, seed)
    extra = [g for t in LIVER_TYPES for g in markers[t]]
    labels = np.array([LIVER_TYPES[i % 2] for i in range(n_cells)])
    lam = np.full((n_cells, len(extra)), 0.3)
    for i, label in enumerate(labels):
        k = LIVER_TYPES.index(label)
        lam[i, k * 8:(k + 1) * 8] += 12.0
    X = sp.hstack([base.X, sp.csr_matrix(rng.poisson(lam).astype(np.float32))]).tocsr()
    adata = ad.AnnData(X, obs=pd.DataFrame({"cell_type": pd.Categorical(labels)}, index=base.obs_names))
    adata.var_names = list(base.var_names) + extra
    adata.obs["species"] = "human"
    return adata


def make_mixed_tissue(n_cells: int, seed: int = 0) -> ad.AnnData:
    """Learned and unlearned types in one file: alpha and beta cells of make_counts (the types the
    test checkpoints learn) and hepatocytes (novel_counts cells), each raising 8 of its PanglaoDB
    markers (real symbols, so the shipped marker table knows them) appended after the planted genes."""
    from instructcell_agent.interpret.markers import load_marker_db

    db = load_marker_db("panglaodb")
    entries = {"alpha": "Alpha cells", "beta": "Beta cells", "Hepatocyte": "Hepatocytes"}
    genes = {t: set(db.genes[e]["human"]) for t, e in entries.items()}
    own = {t: sorted(g - set().union(*(genes[o] for o in genes if o != t)))[:8] for t, g in genes.items()}
    rng = np.random.default_rng(seed)
    base = make_counts(2 * n_cells, seed)
    base = base[base.obs["cell_type"].isin(["alpha", "beta"]).to_numpy()][:n_cells]
    labels = base.obs["cell_type"].astype(str).to_numpy()
    X = base.X.toarray()
    liver = np.arange(n_cells) % 3 == 2  # a third of the cells are hepatocytes
    X[liver] = novel_counts(X[liver]).toarray()
    labels[liver] = "Hepatocyte"
    extra = [g for t in entries for g in own[t]]
    lam = np.full((n_cells, len(extra)), 0.3)
    for k, t in enumerate(entries):
        lam[np.ix_(labels == t, np.arange(k * 8, (k + 1) * 8))] += 12.0
    X = sp.csr_matrix(np.hstack([X, rng.poisson(lam)]).astype(np.float32))
    adata = ad.AnnData(X, obs=pd.DataFrame({"cell_type": pd.Categorical(labels)}, index=base.obs_names))
    adata.var_names = list(base.var_names) + extra
    adata.obs["species"] = "human"
    return adata


def novel_counts(counts) -> sp.csr_matrix:
    """Cells of a type no training cell shows: `counts` (cells of make_counts) with every planted
    marker at background level (values moved from GENE100-115) and a block of genes no type marks
    (GENE060-067) raised instead."""
    dense = sp.csr_matrix(counts).toarray()
    dense[:, :16] = dense[:, 100:116]
    dense[:, 60:68] += np.random.default_rng(3).poisson(30.0, size=(dense.shape[0], 8))
    return sp.csr_matrix(dense.astype(np.float32))


def tiny_train_config(**overrides):
    """Training settings for the tiny model; the LM is tuned too, since a random frozen LM
    cannot be steered to spell labels in a few dozen steps."""
    from instructcell_agent.core_model.config import BackboneConfig
    from instructcell_agent.core_model.training import TrainConfig

    settings = dict(
        backbone=BackboneConfig(kind="tiny", tiny_hidden=64, tiny_layers=2), n_hvg=N_GENES, hidden_dim=64, dim=32,
        n_queries=4, n_layers=1, encoder_epochs=20, encoder_batch=32, lm_steps=60, batch_size=16, lr=3e-3,
        train_lm=True, valid_cells=40, save_every=50, gene_keep=0.95, panel_drop_prob=0.0,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


STIM_GENES = ("GENE100", "GENE101", "GENE102", "GENE103")


def make_condition_counts(n_cells: int, seed: int = 0):
    """The shared planted set (make_counts) plus obs['condition'] ctrl/stim, stim raising 4 genes."""
    adata = make_counts(n_cells, seed)
    rng = np.random.default_rng(seed + 1)
    stim = (np.arange(n_cells) // 4) % 2 == 1  # every type gets both conditions
    X = adata.X.toarray()
    cols = [adata.var_names.get_loc(g) for g in STIM_GENES]
    X[np.ix_(stim, cols)] += rng.poisson(10.0, size=(int(stim.sum()), len(cols)))
    adata.X = type(adata.X)(X)
    adata.obs["condition"] = np.where(stim, "stim", "ctrl")
    adata.obs["sequencing_method"] = "10x Chromium"
    return adata


def tiny_generator_config(**overrides):
    from instructcell_agent.core_model.generation.train import GeneratorTrainConfig

    settings = dict(epochs=40, batch_size=32, hidden_dim=32, latent_dim=4, cond_dim=8, lr=3e-3, signal_prompts=160,
                    signal_tune_prompts=64, signal_fit_epochs=300,
                    signal_chunk=32, signal_inner_steps=10, signal_lr=1e-2, check_phrasings=1)
    settings.update(overrides)
    return GeneratorTrainConfig(**settings)


def make_barnyard(cells: ad.AnnData) -> tuple[ad.AnnData, list[str]]:
    """`cells` as human cells beside 8 mouse cells and 2 droplets holding one of each, counted
    against a combined reference: every gene's name and id carries its genome's prefix (ids from
    `var['gene_ids']`, else ENSG + position). Returns the cells and each feature's genome."""
    human = sp.csr_matrix(cells.X).toarray()
    rng = np.random.default_rng(7)
    mouse = rng.poisson(3.0, size=(8, 30)).astype(np.float32)
    n_h, n_m = human.shape[0], mouse.shape[0]
    X = np.zeros((n_h + n_m + 2, human.shape[1] + mouse.shape[1]), dtype=np.float32)
    X[:n_h, :human.shape[1]] = human
    X[n_h:n_h + n_m, human.shape[1]:] = mouse
    X[n_h + n_m:, :human.shape[1]] = human[:2]  # a human and a mouse cell in one droplet
    X[n_h + n_m:, human.shape[1]:] = mouse[:2] * 2
    X[:n_h, human.shape[1]] += 1  # a little cross-species background, on a mouse gene
    barnyard = ad.AnnData(sp.csr_matrix(X))
    barnyard.obs_names = [*cells.obs_names, *(f"mouse{i}" for i in range(n_m)), "doublet0", "doublet1"]
    barnyard.var_names = [*(f"GRCh38_{g}" for g in cells.var_names), *(f"mm10___Gene{j:03d}" for j in range(30))]
    ids = cells.var["gene_ids"] if "gene_ids" in cells.var else [f"ENSG{j:011d}" for j in range(cells.n_vars)]
    barnyard.var["gene_ids"] = [*(f"GRCh38_{i}" for i in ids),
                                *(f"mm10___ENSMUSG{j:011d}" for j in range(30))]
    return barnyard, ["GRCh38"] * cells.n_vars + ["mm10"] * 30


def write_cellranger(adata: ad.AnnData, dest, layout: str = "h5", extra_features: int = 0,
                     genomes: list[str] | None = None) -> None:
    """Write `adata`'s counts as Cell Ranger does: `layout` "h5" (version 3 HDF5, `dest` a file),
    "h5_v2" (one group per genome), "mtx" (`dest` a folder of gzipped Matrix Market files) or
    "mtx_v2" (version 2's folder: plain matrix.mtx, genes.tsv of id and symbol, barcodes.tsv).
    `var['gene_ids']` gives the Ensembl ids (else ENSG + position). `extra_features` antibody
    features follow the genes (CITE-seq), with counts of their own. `genomes`: each feature's genome
    ("h5" only; default all GRCh38)."""
    import gzip

    import h5py
    import scipy.io

    counts = sp.csr_matrix(adata.X, dtype=np.float32)
    names = [str(n) for n in adata.var_names]
    ids = [str(i) for i in adata.var["gene_ids"]] if "gene_ids" in adata.var else [
        f"ENSG{j:011d}" for j in range(len(names))]
    types = ["Gene Expression"] * len(names)
    if extra_features:
        antibody = np.random.default_rng(1).poisson(50.0, size=(counts.shape[0], extra_features))
        counts = sp.hstack([counts, sp.csr_matrix(antibody.astype(np.float32))]).tocsr()
        names += [f"CD{k}_TotalSeqB" for k in range(extra_features)]
        ids += [f"CD{k}" for k in range(extra_features)]
        types += ["Antibody Capture"] * extra_features
    barcodes = [str(b) for b in adata.obs_names]
    if layout == "mtx_v2":
        dest.mkdir(parents=True)
        scipy.io.mmwrite(dest / "matrix.mtx", counts.T.tocoo().astype(np.int64))
        (dest / "genes.tsv").write_text("".join(f"{i}\t{n}\n" for i, n in zip(ids, names)))
        (dest / "barcodes.tsv").write_text("".join(f"{b}\n" for b in barcodes))
        return
    if layout == "mtx":
        dest.mkdir(parents=True)
        with gzip.open(dest / "matrix.mtx.gz", "wb") as fh:
            scipy.io.mmwrite(fh, counts.T.tocoo().astype(np.int64))
        with gzip.open(dest / "features.tsv.gz", "wt") as fh:
            fh.writelines(f"{i}\t{n}\t{t}\n" for i, n, t in zip(ids, names, types))
        with gzip.open(dest / "barcodes.tsv.gz", "wt") as fh:
            fh.writelines(f"{b}\n" for b in barcodes)
        return
    # Cell Ranger stores features x barcodes as CSC, which is the cells x genes CSR below.
    with h5py.File(dest, "w") as f:
        if layout == "h5":
            g = f.create_group("matrix")
            features = g.create_group("features")
            features["id"], features["name"] = np.array(ids, dtype="S"), np.array(names, dtype="S")
            features["feature_type"] = np.array(types, dtype="S")
            features["genome"] = np.array(genomes or ["GRCh38"] * len(ids), dtype="S")
            features["_all_tag_keys"] = np.array([b"genome"])
        else:
            g = f.create_group("GRCh38")
            g["genes"], g["gene_names"] = np.array(ids, dtype="S"), np.array(names, dtype="S")
        g["barcodes"] = np.array(barcodes, dtype="S")
        g["data"] = counts.data.astype(np.int32)
        g["indices"], g["indptr"] = counts.indices.astype(np.int64), counts.indptr.astype(np.int64)
        g["shape"] = np.array([counts.shape[1], counts.shape[0]], dtype=np.int32)


def write_loom(adata, path, *, strings="bytes") -> None:
    """A loom file as loompy writes it: genes x cells (chunked, as loompy's 64 x 64), attributes as
    fixed-length bytes or variable-length strings."""
    import h5py

    def text(values):
        values = [str(v) for v in values]
        return np.array(values, dtype="S") if strings == "bytes" else np.array(values, dtype=h5py.string_dtype())

    with h5py.File(path, "w") as f:
        f.create_dataset("matrix", data=adata.X.toarray().T.astype(np.uint16),
                         chunks=(min(64, adata.n_vars), min(64, adata.n_obs)))
        f.create_dataset("layers/spliced", data=adata.X.toarray().T.astype(np.uint16))
        f.create_dataset("row_attrs/Gene", data=text(adata.var_names))
        f.create_dataset("row_attrs/Accession", data=text(adata.var["gene_ids"]))
        f.create_dataset("col_attrs/CellID", data=text(adata.obs_names))
        f.create_dataset("col_attrs/ClusterName", data=text(adata.obs["cell_type"]))
        f.create_dataset("col_attrs/Age", data=np.arange(adata.n_obs, dtype=np.float64))
        f.create_dataset("col_attrs/_X_tsne", data=np.zeros((adata.n_obs, 2)))  # 2-D: an embedding, left out
        f.create_group("attrs")


def write_h5seurat(adata, path, *, counts: bool = True, meta: str = "group") -> None:
    """An h5Seurat file as SeuratDisk's specification lays it out: the RNA assay's `counts` (or,
    with counts=False, an empty counts matrix beside log-normalised `data`) as dgCMatrix groups,
    `features`, `cell.names`, and `meta.data` as a group (cell_type a factor) or, with
    meta="compound", one compound dataset."""
    import h5py

    strings = h5py.string_dtype()
    X = sp.csr_matrix(adata.X, dtype=np.float64)  # cells x genes CSR = R's genes x cells dgCMatrix

    def sparse(group, matrix):
        group["data"], group["indices"], group["indptr"] = matrix.data, matrix.indices, matrix.indptr
        group.attrs["dims"] = np.array([adata.n_vars, adata.n_obs], dtype=np.int32)

    with h5py.File(path, "w") as f:
        f.attrs["active.assay"], f.attrs["project"], f.attrs["version"] = "RNA", "test", "3.1.5"
        f.create_dataset("cell.names", data=np.array(list(adata.obs_names), dtype=object), dtype=strings)
        rna = f.create_group("assays/RNA")
        rna.attrs["key"] = "rna_"
        rna.create_dataset("features", data=np.array(list(adata.var_names), dtype=object), dtype=strings)
        if counts:
            sparse(rna.create_group("counts"), X)
            sparse(rna.create_group("data"), X.log1p())
        else:
            sparse(rna.create_group("counts"), sp.csr_matrix(X.shape))
            sparse(rna.create_group("data"), X.log1p())
        labels = list(adata.obs["cell_type"].astype(str))
        if meta == "compound":
            rows = np.array([(label, float(i)) for i, label in enumerate(labels)],
                            dtype=[("cell_type", strings), ("nCount_RNA", np.float64)])
            f.create_dataset("meta.data", data=rows)
        else:
            group = f.create_group("meta.data")
            group.attrs["colnames"] = np.array(["cell_type", "nCount_RNA"], dtype=object)
            levels = sorted(set(labels))
            factor = group.create_group("cell_type")
            factor.create_dataset("levels", data=np.array(levels, dtype=object), dtype=strings)
            factor["values"] = np.array([levels.index(label) + 1 for label in labels], dtype=np.int32)
            group["nCount_RNA"] = np.asarray(X.sum(axis=1)).ravel()
        f.create_group("misc")
        f.create_group("tools")


def read_untouched(path, kind: str):
    """`read_cells(path)`, checking that `path` is taken for format `kind` and left byte for byte."""
    from instructcell_agent.core_model.readers import cell_file_format, read_cells

    before = path.read_bytes()
    assert cell_file_format(path) == kind
    got = read_cells(path)
    assert path.read_bytes() == before
    return got

