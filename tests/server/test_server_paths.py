"""Path containment, output staging and settings: no model needed."""

from __future__ import annotations

import os

import pytest

from instructcell_agent.server.config import ServerConfig
from instructcell_agent.server.outputs import Staging, clean_stale_staging
from instructcell_agent.server.paths import PathNotAllowedError, resolve_input, resolve_output


@pytest.fixture()
def tree(tmp_path):
    root, other = tmp_path / "root", tmp_path / "other"
    (root / "a").mkdir(parents=True)
    other.mkdir()
    (root / "a" / "x.h5ad").write_bytes(b"\x89HDF")
    (other / "y.h5ad").write_bytes(b"\x89HDF")
    os.symlink(other / "y.h5ad", root / "out_link.h5ad")
    os.symlink(other, root / "out_dir_link")
    os.symlink(root / "a" / "x.h5ad", root / "in_link.h5ad")
    return root.resolve(), other.resolve()


def test_relative_and_absolute_paths_inside_a_root(tree):
    root, _ = tree
    assert resolve_input("a/x.h5ad", [root]) == root / "a" / "x.h5ad"
    assert resolve_input(str(root / "a" / "x.h5ad"), [root]) == root / "a" / "x.h5ad"
    assert resolve_input("in_link.h5ad", [root]) == root / "a" / "x.h5ad"  # symlink within the root


@pytest.mark.parametrize("given", ["../other/y.h5ad", "a/../../other/y.h5ad", "out_link.h5ad",
                                   "out_dir_link/y.h5ad"])
def test_escapes_are_refused(tree, given):
    root, _ = tree
    with pytest.raises(PathNotAllowedError, match="outside the allowed data roots"):
        resolve_input(given, [root])


def test_absolute_path_outside_is_refused_but_a_second_root_allows_it(tree):
    root, other = tree
    with pytest.raises(PathNotAllowedError, match="outside"):
        resolve_input(str(other / "y.h5ad"), [root])
    assert resolve_input(str(other / "y.h5ad"), [root, other]) == other / "y.h5ad"


@pytest.mark.parametrize("given, message", [("", "empty"), ("a\x00.h5ad", "NUL"),
                                            ("a", "neither a zarr store nor a matrix folder"),
                                            ("missing.h5ad", "no such file")])
def test_bad_inputs(tree, given, message):
    with pytest.raises(PathNotAllowedError, match=message):
        resolve_input(given, [tree[0]])


def test_wrong_suffix(tree):
    root, _ = tree
    (root / "t.json").write_text("{}\n")
    with pytest.raises(PathNotAllowedError, match="does not end in .h5ad or .h5.*count table"):
        resolve_input("t.json", [root])
    for name in ("t.csv", "t.tsv.gz", "GSE1_counts.txt"):  # count tables, admitted by their suffixes
        (root / name).write_text("a,b\n")
        assert resolve_input(name, [root]) == (root / name).resolve()


def test_output_reads_stay_in_the_output_dir(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "r.csv").write_text("x\n")
    (tmp_path / "secret.csv").write_text("s\n")
    assert resolve_output("r.csv", out.resolve()) == (out / "r.csv").resolve()
    for bad in ("../secret.csv", "/etc/passwd", ".staging-x/r.csv", ""):
        with pytest.raises(PathNotAllowedError):
            resolve_output(bad, out.resolve())


def test_staging_publishes_on_commit_and_forgets_on_error(tmp_path):
    out = tmp_path / "out"
    with Staging(out) as staging:
        staging.path("a.csv").write_text("a\n")
        (staging.path("folder")).mkdir()
        staging.path("folder/b.png").write_bytes(b"png")
        files = staging.commit({"a.csv": "table", "folder": "figures"})
    assert sorted(p.name for p in out.iterdir()) == ["a.csv", "folder"]
    assert {f.kind for f in files} == {"table", "figures:b"}
    assert {f.uri for f in files} == {"instructcell://outputs/a.csv", "instructcell://outputs/folder/b.png"}
    with pytest.raises(RuntimeError):
        with Staging(out) as staging:
            staging.path("c.csv").write_text("c\n")
            raise RuntimeError("cancelled")
    assert sorted(p.name for p in out.iterdir()) == ["a.csv", "folder"]


def test_stale_staging_folders_are_removed_at_start(tmp_path):
    (tmp_path / ".staging-old").mkdir()
    (tmp_path / ".staging-old" / "half.h5ad").write_bytes(b"x")
    assert clean_stale_staging(tmp_path) == 0  # fresh: maybe another server's work in progress
    assert clean_stale_staging(tmp_path, older_than_s=-1) == 1 and not (tmp_path / ".staging-old").exists()


def test_config_checks(tmp_path):
    with pytest.raises(ValueError, match="data root"):
        ServerConfig(data_roots=(), output_dir=tmp_path)
    with pytest.raises(ValueError, match="device"):
        ServerConfig(data_roots=(tmp_path,), output_dir=tmp_path, device="tpu")
    with pytest.raises(ValueError, match="precision"):
        ServerConfig(data_roots=(tmp_path,), output_dir=tmp_path, precision="float16")
    cfg = ServerConfig(data_roots=(str(tmp_path),), output_dir=tmp_path / "o").with_limits(max_cells=5)
    assert cfg.limits.max_cells == 5 and cfg.data_roots == (tmp_path.resolve(),)


def test_http_exposure_rules():
    from instructcell_agent.server.http_transport import check_http_exposure, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    check_http_exposure("127.0.0.1", None)
    check_http_exposure("0.0.0.0", "token")
    with pytest.raises(ValueError, match="without a bearer token"):
        check_http_exposure("0.0.0.0", None)


def test_the_explain_count_leaves_out_cells_without_a_label_as_explain_does():
    import numpy as np
    import pandas as pd

    from instructcell_agent.server.schemas import ExplainGenesRequest
    from instructcell_agent.server.service import _explained_count

    obs = pd.DataFrame({"answer": ["a"] * 6 + ["b"] * 2 + ["Unassigned"] * 3 + [np.nan]})
    count = lambda **kw: _explained_count(obs, ExplainGenesRequest(h5ad_path="x.h5ad", **kw))  # noqa: E731
    assert count() == 12  # predicted labels: every cell
    assert count(labels="answer") == 8
    assert count(labels="answer", max_cells_per_label=4) == 6
    assert count(labels="answer", candidates=["a", "b", "Unassigned"]) == 11  # a candidate: explained
    assert count(labels="a", max_cells_per_label=5) == 5  # one label for every cell
    # no labels: answered first, at most the cap for each answer the model can give (a bound)
    assert _explained_count(obs, ExplainGenesRequest(h5ad_path="x.h5ad", max_cells_per_label=2), 3) == 6
    assert _explained_count(obs, ExplainGenesRequest(h5ad_path="x.h5ad", max_cells_per_label=5), 3) == 12
