"""Count tables as GEO series ship them: genes x cells or cells x genes, comma, tab or blanks,
with or without the header's corner cell, compressed or not; and the refusals that say what is
wrong with a table that cannot be read."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from instructcell_agent import default_checkpoint_path
from instructcell_agent.core_model.alignment import align_to_vocab
from instructcell_agent.core_model.errors import InputFileError
from instructcell_agent.core_model.readers import cell_file_format, read_cells

_COMPRESS = {"": lambda b: b, ".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}


@pytest.fixture(scope="module")
def vocab() -> list[str]:
    return json.loads((default_checkpoint_path() / "gene_vocab.json").read_text())


@pytest.fixture(scope="module")
def cells(vocab) -> ad.AnnData:
    """30 cells x 80 genes of the shipped model's vocabulary, raw counts, a third of them zero."""
    rng = np.random.default_rng(0)
    counts = rng.poisson(2.0, size=(30, 80)).astype(np.float32) * (rng.random((30, 80)) > 0.33)
    adata = ad.AnnData(sp.csr_matrix(counts))
    adata.obs_names = [f"AAACCTG{i:04d}-1" for i in range(30)]
    adata.var_names = vocab[100:180]
    return adata


def _write(path, text: str) -> None:
    suffix = path.suffix if path.suffix in _COMPRESS else ""
    path.write_bytes(_COMPRESS[suffix](text.encode()))


def _table(adata, *, genes_in_rows: bool, sep: str, corner: str | None, quote: bool = False) -> str:
    """The table as R (corner None: the header leaves it out) or pandas (corner given) writes it."""
    dense = adata.X.toarray()
    rows, columns, values = ((adata.var_names, adata.obs_names, dense.T) if genes_in_rows
                             else (adata.obs_names, adata.var_names, dense))
    q = (lambda s: f'"{s}"') if quote else str
    header = ([q(corner)] if corner is not None else []) + [q(c) for c in columns]
    lines = [sep.join(header)] + [sep.join([q(r)] + [f"{v:g}" for v in row]) for r, row in zip(rows, values)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("name, genes_in_rows, sep, corner, quote", [
    ("counts.csv.gz", True, ",", None, False),  # R's write.csv, no corner cell
    ("counts.csv", True, ",", "", True),  # write.csv of a data frame with row names: a quoted empty corner
    ("dge.txt.gz", True, "\t", "GENE", False),  # Drop-seq's digital expression
    ("cells.tsv", False, "\t", "cell", False),  # pandas' to_csv of a cells x genes frame
    ("cells.tsv.bz2", False, "\t", None, False),
    ("matrix.txt.xz", True, " ", None, True),  # R's write.table defaults: blanks and quotes
])
def test_tables_read_as_the_cells_they_hold(cells, tmp_path, name, genes_in_rows, sep, corner, quote):
    path = tmp_path / name
    _write(path, _table(cells, genes_in_rows=genes_in_rows, sep=sep, corner=corner, quote=quote))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert cell_file_format(path) == "text"
    got = read_cells(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest  # read-only
    assert list(got.obs_names) == list(cells.obs_names)
    assert list(got.var_names) == list(cells.var_names)
    assert got.X.format == "csr" and got.X.dtype == np.float32
    np.testing.assert_array_equal(got.X.toarray(), cells.X.toarray())


def test_a_table_aligns_as_the_anndata_it_came_from(cells, vocab, tmp_path):
    path = tmp_path / "GSE000_counts.csv.gz"
    _write(path, _table(cells, genes_in_rows=True, sep=",", corner=None))
    from_table = align_to_vocab(read_cells(path), vocab, min_genes=10)
    from_anndata = align_to_vocab(cells, vocab, min_genes=10)
    assert from_table.report.n_matched == from_anndata.report.n_matched == 80
    assert from_table.report.value_type["kind"] == "raw_counts"
    np.testing.assert_array_equal(from_table.X.toarray(), from_anndata.X.toarray())


def test_ensembl_id_and_symbol_columns_both_kept(cells, vocab, tmp_path):
    from instructcell_agent.core_model.genes import gene_annotation

    ids = gene_annotation(list(cells.var_names))[0]
    keep = [i for i, e in enumerate(ids) if e is not None]
    genes = cells[:, keep]
    dense = genes.X.toarray().T
    lines = ["gene_id\tgene_name\t" + "\t".join(genes.obs_names)]
    lines += ["\t".join([ids[k], s] + [f"{v:g}" for v in row]) for k, s, row in zip(keep, genes.var_names, dense)]
    path = tmp_path / "counts.tsv"
    path.write_text("\n".join(lines) + "\n")
    got = read_cells(path)
    assert list(got.obs_names) == list(genes.obs_names)
    # both name columns look like genes: the first is var_names, the other a var column named by its header
    assert list(got.var_names) == [ids[k] for k in keep]
    assert list(got.var["gene_name"]) == list(genes.var_names)
    assert align_to_vocab(got, vocab, min_genes=10).report.n_matched == len(keep)


def test_names_joining_an_ensembl_id_and_a_symbol_align_as_either(cells, vocab):
    from instructcell_agent.core_model.genes import gene_annotation

    ids = gene_annotation(list(cells.var_names))[0]
    joined = cells.copy()
    # each name with an id joined one way or the other; a gene the table gives no id keeps its symbol
    joined.var_names = [s if e is None else f"{e}|{s}" if i % 2 else f"{s}_{e}" for i, (e, s) in
                        enumerate(zip(ids, cells.var_names))]
    assert sum(e is not None for e in ids) > 60
    got = align_to_vocab(joined, vocab, min_genes=10)
    assert got.report.n_matched == align_to_vocab(cells, vocab, min_genes=10).report.n_matched
    assert any("read as an Ensembl id" in n for n in got.report.notes)


@pytest.mark.parametrize("text, message", [
    ("", "no lines"),
    ("cell1,cell2\n", "a header and no data"),
    ("c1,c2\nACTB,1,2\nCD3E,1\n", "line 3 holds 2 fields where the first data line holds 3"),
    ("c1,c2\nACTB,1,2\nCD3E,1,2,5\n", "Expected 3 fields in line 3, saw 4"),
    ("c1,c2\nACTB,1,2\nCD3E,1,NA\n", "line 3 holds an empty or NA value"),
    ("c1,c2\nACTB,1,2\nCD3E,1,high\n", "'high'.*every value must be a number"),
    ("c1,c2,c3,c4\nACTB,1,2\n", "the header has 4 fields and the first data line 3"),
    ("gene,cell,count\nACTB,AAAC-1,5\nCD3E,AAAC-1,2\n", "looks like a long table.*pivot it"),
    ("cell_a,cell_b\nrow_1,1,2\nrow_2,3,4\n", "neither its row names .*row_1.* nor its column names .*cell_a.* look "
                                              "like genes"),
])
def test_unreadable_tables_are_refused_saying_why(tmp_path, text, message):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(InputFileError, match=message):
        read_cells(path)


def test_a_delimiter_ending_every_line_is_no_cell(cells, tmp_path):
    text = _table(cells, genes_in_rows=True, sep="\t", corner="gene")
    path = tmp_path / "t.txt"
    path.write_text("".join(line + "\t\n" for line in text.splitlines()))
    got = read_cells(path)
    assert list(got.obs_names) == list(cells.obs_names)
    np.testing.assert_array_equal(got.X.toarray(), cells.X.toarray())


def test_a_compressed_suffix_on_plain_text_is_refused(tmp_path):
    path = tmp_path / "t.csv.gz"
    path.write_text("c1,c2\nACTB,1,2\n")
    with pytest.raises(InputFileError, match="could not be read as a text table.*gzip"):
        read_cells(path)


def test_a_missing_value_deep_in_a_large_table_names_its_line(cells, tmp_path, monkeypatch):
    import instructcell_agent.core_model.text_matrix as text_matrix

    monkeypatch.setattr(text_matrix, "_BLOCK_VALUES", 64)  # many blocks of 2 lines
    lines = _table(cells, genes_in_rows=True, sep=",", corner=None).splitlines()
    lines[57] = lines[57].rsplit(",", 1)[0] + ","  # the last value of the 57th data line left empty
    path = tmp_path / "t.csv.gz"
    _write(path, "\n".join(lines) + "\n")
    with pytest.raises(InputFileError, match="line 58 holds an empty or NA value"):
        read_cells(path)


def test_pandas_frames_written_both_ways_agree(cells, tmp_path):
    frame = pd.DataFrame(cells.X.toarray(), index=cells.obs_names, columns=cells.var_names)
    frame.to_csv(tmp_path / "a.csv")
    frame.T.to_csv(tmp_path / "b.csv.gz")
    a, b = read_cells(tmp_path / "a.csv"), read_cells(tmp_path / "b.csv.gz")
    assert list(a.obs_names) == list(b.obs_names) == list(cells.obs_names)
    np.testing.assert_array_equal(a.X.toarray(), b.X.toarray())
