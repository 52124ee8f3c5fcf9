"""Every tool through the SDK's in-memory client: schemas, structured output, files, errors, jobs.

The server runs the tiny generator checkpoint (annotation + generation) on planted data, so the
whole module takes seconds.
"""

from __future__ import annotations

import json
import threading
import warnings

import anndata as ad
import anyio
import jsonschema
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from mcp import Client

import instructcell_agent as ica
from instructcell_agent.server.mcp_app import build_server
from instructcell_agent.server.toolbox import Toolbox
from server_testkit import N_CELLS, digest, make_config, make_data_root, output_entries
from synthetic import CELL_TYPES, make_counts, novel_counts

CANDIDATES = list(CELL_TYPES)


@pytest.fixture(scope="module")
def env(tmp_path_factory, gen_checkpoint):
    paths = make_data_root(tmp_path_factory.mktemp("mcp_tools"))
    toolbox = Toolbox(make_config(paths, gen_checkpoint))
    server = build_server(toolbox=toolbox)
    yield {"paths": paths, "toolbox": toolbox, "server": server}
    toolbox.shutdown()


def run(server, script):
    """Connect an in-memory client, run `script(client)`, return its value."""

    async def main():
        async with Client(server) as client:
            return await script(client)

    return anyio.run(main)


def call(server, name, arguments, **kw):
    return run(server, lambda c: c.call_tool(name, arguments, **kw))


def check_structured(server, name, result):
    """The structured content validates against the tool's published output schema."""
    assert not result.is_error, result.content[0].text
    tools = run(server, lambda c: c.list_tools())
    schema = next(t.output_schema for t in tools.tools if t.name == name)
    jsonschema.validate(result.structured_content, schema)
    # The text block carries the same result for clients that only read text.
    text = json.loads(result.content[0].text)
    assert text.get("status", text.get("kind")) == result.structured_content.get(
        "status", result.structured_content.get("kind"))
    return result.structured_content


def error_text(result) -> str:
    assert result.is_error, result.structured_content
    return result.content[0].text


# ------------------------------------------------------------------ listing


def test_every_tool_is_listed_with_typed_schemas_and_hints(env):
    tools = {t.name: t for t in run(env["server"], lambda c: c.list_tools()).tools}
    assert set(tools) == {"inspect_dataset", "describe_model", "annotate_cells", "predict_drug_response",
                          "generate_cells", "explain_genes", "job_status", "job_result", "cancel_job"}
    for name in ("inspect_dataset", "annotate_cells", "predict_drug_response", "explain_genes"):
        props = tools[name].input_schema["properties"]
        assert "h5ad_path" in props and props["h5ad_path"]["description"]
        assert "h5ad_path" in tools[name].input_schema["required"]
    for tool in tools.values():
        assert tool.description and tool.output_schema and tool.annotations is not None
        assert all(p.get("description") for p in tool.input_schema["properties"].values()), tool.name
    top_k = tools["explain_genes"].input_schema["properties"]["top_k"]
    assert top_k["minimum"] == 1 and top_k["maximum"] == 1000
    assert tools["inspect_dataset"].annotations.read_only_hint is True
    assert tools["job_status"].annotations.read_only_hint is True
    assert tools["annotate_cells"].annotations.read_only_hint is False
    assert tools["annotate_cells"].annotations.destructive_hint is False
    assert "600" in tools["annotate_cells"].description  # the configured limit is stated


def test_workflow_prompts_name_only_tools_and_arguments_there_are(env):
    from instructcell_agent.server.prompts import REFERENCES
    from instructcell_agent.server.toolbox import SPECS

    prompts = {p.name: p for p in run(env["server"], lambda c: c.list_prompts()).prompts}
    assert set(prompts) == set(REFERENCES) and all(p.description for p in prompts.values())
    args = {"annotate_dataset": {"h5ad_path": "pbmc/cells.h5ad"},
            "drug_response_report": {"h5ad_path": "pc9.h5ad", "drug": "erlotinib"},
            "generate_and_check": {"cell_type": "CD14+ Mono", "n": "50"}}
    requests = {spec.name: spec.request.model_fields for spec in SPECS}
    for name, references in REFERENCES.items():
        got = run(env["server"], lambda c, name=name: c.get_prompt(name, args[name]))
        text = got.messages[0].content.text
        assert all(value in text for value in args[name].values())  # the user's arguments reach the text
        for tool, argument in references:
            assert tool in text and (argument is None or argument in text), (name, tool, argument)
            assert argument is None or argument in requests[tool], (tool, argument)  # still a real argument


# ------------------------------------------------------------------ tools


def test_describe_model_lists_what_it_learned(env):
    info = check_structured(env["server"], "describe_model", call(env["server"], "describe_model", {}))
    model = env["server"].toolbox.service.model()
    assert {s["name"] for s in info["label_sets"]} == set(model.label_sets)
    assert all(s["labels"] and s["task"] in ("annotation", "drug_response") for s in info["label_sets"])
    # what generate_cells can draw: every training condition of the generator, grouped by type and set
    from instructcell_agent.core_model.generation.generator import load_generator

    records = load_generator(model).table.records
    drawn = {(g["cell_type"], g["species"], g["tissue"], c)
             for g in info["generation"] for c in g["conditions"] or [""]}
    assert drawn == {(r.condition.cell_type, r.condition.species, r.condition.tissue, r.condition.condition)
                     for r in records}
    assert sum(g["n_cells"] for g in info["generation"]) == sum(r.n_cells for r in records)
    assert info["typicality"] is (model.reference is not None)
    text = error_text(call(env["server"], "describe_model", {"verbose": True}))  # no arguments to take
    assert "verbose" in text


def test_describe_model_without_a_usable_generator_still_lists_the_label_sets(gen_checkpoint, tmp_path):
    import shutil

    from instructcell_agent.core_model.generation.generator import WEIGHTS_FILE
    from instructcell_agent.server.config import ServerConfig
    from instructcell_agent.server.schemas import DescribeModelRequest
    from instructcell_agent.server.service import InstructCellService

    copy = tmp_path / "ckpt"
    shutil.copytree(gen_checkpoint, copy)
    with open(copy / WEIGHTS_FILE, "ab") as fh:  # the generator's weights no longer match their record
        fh.write(b"\0")
    service = InstructCellService(ServerConfig(data_roots=(tmp_path,), output_dir=tmp_path / "out", checkpoint=copy))
    info = service.describe_model(DescribeModelRequest())
    assert info.generation is None and "does not match" in info.generation_note
    assert {s.name for s in info.label_sets} == set(service.model().label_sets)


def test_inspect_dataset(env):
    result = call(env["server"], "inspect_dataset", {"h5ad_path": "planted.h5ad"})
    info = check_structured(env["server"], "inspect_dataset", result)
    assert (info["n_cells"], info["n_genes"]) == (N_CELLS, 120) and info["input_format"] == "h5ad"
    assert info["value_type"] == "raw_counts"
    assert {c["name"] for c in info["obs_columns"]} == {"cell_type", "species", "tissue"}
    cell_type = next(c for c in info["obs_columns"] if c["name"] == "cell_type")
    assert cell_type["n_unique"] == 4 and set(cell_type["examples"]) <= set(CELL_TYPES)
    assert info["overlap"]["n_matched"] == 120 and info["overlap"]["sufficient"] is True
    assert info["within_cell_limit"] is True and info["runs_in_background"] is False
    assert set(CELL_TYPES) <= set(info["model_annotation_labels"])
    # the label sets learned for the file's species and tissue: the candidates to pass
    assert {name: set(labels) for name, labels in info["matching_label_sets"].items()} == {"planted": set(CELL_TYPES)}
    assert info["tissue_cell_types"] == []
    liver = make_counts(20, seed=21)
    liver.obs["tissue"] = "liver"
    liver.write_h5ad(env["paths"]["root"] / "liver.h5ad")
    info = check_structured(env["server"], "inspect_dataset", call(env["server"], "inspect_dataset",
                                                                   {"h5ad_path": "liver.h5ad"}))
    assert info["matching_label_sets"] == {}
    # a tissue the model learned nothing of: its known cell types are offered instead
    assert info["tissue_cell_types"] == ica.tissue_cell_types("liver") and "Hepatocytes" in info["tissue_cell_types"]
    # gene names in a var column, not in var_names: the overlap annotate_cells will find
    numbered = make_counts(20, seed=22)
    numbered.var["gene_name"] = list(numbered.var_names)
    numbered.var_names = [str(i) for i in range(numbered.n_vars)]
    numbered.write_h5ad(env["paths"]["root"] / "numbered.h5ad")
    info = check_structured(env["server"], "inspect_dataset", call(env["server"], "inspect_dataset",
                                                                   {"h5ad_path": "numbered.h5ad"}))
    assert info["overlap"]["n_matched"] == 120 and info["overlap"]["sufficient"] is True
    assert "var['gene_name']" in info["overlap"]["notes"][0]


def test_matching_label_sets_take_the_detected_species_without_a_species_column(gen_model):
    from instructcell_agent.server.replies import candidates_for

    def sets(cells, species):
        return candidates_for(gen_model, cells, species)["matching_label_sets"]

    bare = make_counts(10, seed=3)
    bare.obs = bare.obs[[]]  # Cell Ranger's files hold barcodes only
    assert set(sets(bare, "human")) == {"planted"}
    assert sets(bare, "mouse") == {}
    assert candidates_for(gen_model, bare, "mouse")["tissue_cell_types"] == []  # no tissue to name types of
    bare.obs["species"] = "human"  # a column wins over what the genes show
    assert set(sets(bare, "mouse")) == {"planted"}


def test_annotate_cells_writes_files_and_matches_the_api(env, gen_model):
    paths = env["paths"]
    before = digest(paths["planted"])
    result = call(env["server"], "annotate_cells", {"h5ad_path": str(paths["planted"]), "candidates": CANDIDATES})
    out = check_structured(env["server"], "annotate_cells", result)
    assert out["status"] == "completed" and out["job"] is None
    summary = out["result"]
    assert summary["n_cells"] == N_CELLS and sum(summary["label_counts"].values()) == N_CELLS
    assert summary["candidates"] == CANDIDATES and len(summary["examples"]) == 5
    kinds = {f["kind"]: f for f in summary["outputs"]}
    assert set(kinds) == {"annotated_h5ad", "labels_csv", "map_png"}
    h5 = ad.read_h5ad(kinds["annotated_h5ad"]["path"])
    csv = pd.read_csv(kinds["labels_csv"]["path"], index_col="cell")
    assert h5.n_obs == N_CELLS and "instructcell_label" in h5.obs
    # the map is drawn by default; the file had no UMAP, so the computed one is kept
    assert kinds["map_png"]["mime_type"] == "image/png" and h5.obsm["X_umap"].shape == (N_CELLS, 2)
    image = run(env["server"], lambda c: c.read_resource(kinds["map_png"]["uri"]))
    assert image.contents[0].mime_type == "image/png" and image.contents[0].blob  # readable through the server
    # Chunked server calls give the same answers as one direct API call.
    direct = ica.annotate(ad.read_h5ad(paths["planted"]), model=gen_model, candidates=CANDIDATES)
    assert list(csv["label"]) == list(direct.labels)
    np.testing.assert_allclose(csv["confidence"], direct.confidence, rtol=1e-4, atol=1e-5)
    assert (csv["label"].to_numpy() == h5.obs["cell_type"].to_numpy()).mean() > 0.5  # planted; chance 0.25
    assert digest(paths["planted"]) == before  # the input is never modified
    plain = check_structured(env["server"], "annotate_cells", call(env["server"], "annotate_cells", {
        "h5ad_path": str(paths["planted"]), "candidates": CANDIDATES, "plot": False}))["result"]
    assert {f["kind"] for f in plain["outputs"]} == {"annotated_h5ad", "labels_csv"}
    # Output files come back as resource links and can be read through the server.
    links = [b for b in result.content if b.type == "resource_link"]
    assert {str(l.uri) for l in links} == {f["uri"] for f in summary["outputs"]}
    text = run(env["server"], lambda c: c.read_resource(kinds["labels_csv"]["uri"]))
    assert text.contents[0].text.splitlines()[0].startswith("cell,label,confidence")


@pytest.mark.parametrize("layout", ["h5", "mtx", "zarr"])
def test_cellranger_outputs_and_zarr_stores_are_read_as_the_same_cells(env, layout):
    from synthetic import write_cellranger

    root = env["paths"]["root"]
    cells = ad.read_h5ad(env["paths"]["planted"])
    name = {"h5": "filtered_feature_bc_matrix.h5", "mtx": "filtered_feature_bc_matrix", "zarr": "planted.zarr"}[layout]
    dest = root / f"run_{layout}" / name
    dest.parent.mkdir()
    if layout == "zarr":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # anndata's note on the zarr format version it writes
            cells.write_zarr(dest)
    else:
        write_cellranger(cells, dest, layout, extra_features=2)
    given = str(dest.relative_to(root))
    info = check_structured(env["server"], "inspect_dataset", call(env["server"], "inspect_dataset",
                                                                   {"h5ad_path": given}))
    assert (info["n_cells"], info["n_genes"]) == (N_CELLS, 120) and info["overlap"]["n_matched"] == 120
    assert info["input_format"] == {"h5": "10x_h5", "mtx": "10x_mtx", "zarr": "zarr"}[layout]
    answers = {}
    for path in (given, "planted.h5ad"):
        result = call(env["server"], "annotate_cells", {"h5ad_path": path, "candidates": CANDIDATES,
                                                        "species": "human", "tissue": "pancreas"})
        summary = check_structured(env["server"], "annotate_cells", result)["result"]
        csv = next(f["path"] for f in summary["outputs"] if f["kind"] == "labels_csv")
        answers[path] = pd.read_csv(csv, index_col="cell")
    pd.testing.assert_frame_equal(answers[given], answers["planted.h5ad"])


def test_a_file_read_whole_to_count_its_cells_is_read_once_per_call(env, monkeypatch):
    from instructcell_agent.server import reading, service
    from synthetic import write_cellranger

    root = env["paths"]["root"]
    write_cellranger(ad.read_h5ad(env["paths"]["planted"]), root / "once.h5", "h5")
    reads = []
    real = service.read_cells
    for module in (service, reading):  # the service reads cells itself and through reading.opened
        monkeypatch.setattr(module, "read_cells", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    for _ in range(2):  # the second call reads again: nothing is kept after a run
        result = call(env["server"], "annotate_cells", {"h5ad_path": "once.h5", "candidates": CANDIDATES,
                                                        "plot": False})
        assert check_structured(env["server"], "annotate_cells", result)["result"]["n_cells"] == N_CELLS
    assert len(reads) == 2
    # inspect_dataset's read is held for the call that follows it
    check_structured(env["server"], "inspect_dataset", call(env["server"], "inspect_dataset", {"h5ad_path": "once.h5"}))
    result = call(env["server"], "annotate_cells", {"h5ad_path": "once.h5", "candidates": CANDIDATES, "plot": False})
    assert check_structured(env["server"], "annotate_cells", result)["result"]["n_cells"] == N_CELLS
    assert len(reads) == 3
    held = env["server"].toolbox.service._held
    held.put([root / "once.h5"], None, ad.AnnData(np.zeros((1, 1))))
    (root / "once.h5").touch()  # changed since it was counted: read afresh
    assert held.take([root / "once.h5"], None) is None


def test_several_samples_are_annotated_in_one_call_and_reported_each(env):
    from synthetic import write_cellranger

    root = env["paths"]["root"]
    cells = ad.read_h5ad(env["paths"]["planted"])
    for name, part in (("ctrl", cells[:20]), ("stim", cells[20:])):
        (root / name / "outs").mkdir(parents=True)
        write_cellranger(part, root / name / "outs" / "filtered_feature_bc_matrix.h5", "h5")
    first, second = (f"{n}/outs/filtered_feature_bc_matrix.h5" for n in ("ctrl", "stim"))
    result = call(env["server"], "annotate_cells", {"h5ad_path": first, "more_samples": [second],
                                                    "candidates": CANDIDATES, "plot": False})
    summary = check_structured(env["server"], "annotate_cells", result)["result"]
    assert summary["n_cells"] == N_CELLS
    assert [(g["group"], g["n_cells"]) for g in summary["groups"]] == [("ctrl", 20), ("stim", N_CELLS - 20)]
    h5 = ad.read_h5ad(next(f["path"] for f in summary["outputs"] if f["kind"] == "annotated_h5ad"))
    assert list(h5.obs["sample"].unique()) == ["ctrl", "stim"] and h5.obs_names[0].endswith("-ctrl")
    explained = check_structured(env["server"], "explain_genes", call(env["server"], "explain_genes", {
        "h5ad_path": first, "more_samples": [second], "candidates": CANDIDATES, "max_cells_per_label": 2,
        "top_k": 3}))["result"]
    assert explained["n_cells"] == N_CELLS and sum(explained["cells_per_label"].values()) <= 2 * len(CANDIDATES)
    text = error_text(call(env["server"], "annotate_cells", {"h5ad_path": first, "more_samples": [first]}))
    assert "named twice" in text


def test_metadata_from_a_table_reaches_groupby_and_compare_key(env):
    root = env["paths"]["root"]
    cells = ad.read_h5ad(env["paths"]["planted"])
    table = root / "meta" / "clusters.csv"
    table.parent.mkdir()
    table.write_text("Barcode,Cluster,author\n" + "".join(
        f"{c},{i % 3},{t}\n" for i, (c, t) in enumerate(zip(cells.obs_names, cells.obs["cell_type"]))))
    result = call(env["server"], "annotate_cells", {"h5ad_path": "planted.h5ad", "obs_table": "meta/clusters.csv",
                                                    "groupby": "Cluster", "compare_key": "author",
                                                    "candidates": CANDIDATES, "plot": False})
    summary = check_structured(env["server"], "annotate_cells", result)["result"]
    assert sorted(g["group"] for g in summary["groups"]) == ["0", "1", "2"]
    assert summary["agreement"]["compare_key"] == "author"
    assert any(f"Cluster, author joined from clusters.csv onto {N_CELLS} of {N_CELLS} cells" in n
               for n in summary["notes"])
    h5 = ad.read_h5ad(next(f["path"] for f in summary["outputs"] if f["kind"] == "annotated_h5ad"))
    assert list(h5.obs["Cluster"]) == [i % 3 for i in range(N_CELLS)]
    # explain_genes explains the labels of a column the table brought, counted against its limit as such
    explained = check_structured(env["server"], "explain_genes", call(env["server"], "explain_genes", {
        "h5ad_path": "planted.h5ad", "obs_table": "meta/clusters.csv", "labels": "author",
        "max_cells_per_label": 3, "top_k": 3}))["result"]
    assert explained["cells_per_label"] == {t: 3 for t in cells.obs["cell_type"].astype(str).unique()}
    assert any("joined from clusters.csv" in n for n in explained["notes"])
    (env["paths"]["outside"] / "secret.csv").write_text(table.read_text())
    outside = error_text(call(env["server"], "annotate_cells", {"h5ad_path": "planted.h5ad",
                                                                "obs_table": "../outside/secret.csv"}))
    assert "outside the allowed data roots" in outside


def test_a_mixed_species_matrix_is_read_for_the_genome_asked(env):
    from synthetic import make_barnyard, write_cellranger

    root = env["paths"]["root"]
    cells = ad.read_h5ad(env["paths"]["planted"])
    barnyard, genomes = make_barnyard(cells)
    dest = root / "barnyard" / "filtered_feature_bc_matrix.h5"
    dest.parent.mkdir()
    write_cellranger(barnyard, dest, "h5", genomes=genomes)
    given = str(dest.relative_to(root))
    refused = error_text(call(env["server"], "inspect_dataset", {"h5ad_path": given}))
    assert "counted against 2 genomes (GRCh38, mm10)" in refused and "genome=" in refused
    info = check_structured(env["server"], "inspect_dataset", call(env["server"], "inspect_dataset",
                                                                   {"h5ad_path": given, "genome": "GRCh38"}))
    assert (info["n_cells"], info["overlap"]["n_matched"]) == (N_CELLS, 120)
    result = call(env["server"], "annotate_cells", {"h5ad_path": given, "genome": "GRCh38", "candidates": CANDIDATES,
                                                    "species": "human", "tissue": "pancreas"})
    summary = check_structured(env["server"], "annotate_cells", result)["result"]
    assert summary["n_cells"] == N_CELLS
    assert any(n.startswith("GRCh38: kept") and "left out 8 mostly on another" in n for n in summary["notes"])


def test_annotate_cells_passes_on_what_to_weigh(env):
    free = call(env["server"], "annotate_cells", {"h5ad_path": "planted.h5ad", "tissue": "liver"})
    notes = check_structured(env["server"], "annotate_cells", free)["result"]["notes"]
    liver = [n for n in notes if "liver" in n]
    assert len(liver) == 1 and "Pass candidates" in liver[0] and len(set(notes)) == len(notes)
    renamed = call(env["server"], "annotate_cells", {"h5ad_path": "planted.h5ad",
                                                     "candidates": ["pancreatic A cell", "type B pancreatic cell"]})
    summary = check_structured(env["server"], "annotate_cells", renamed)["result"]
    assert any("Cell Ontology" in n for n in summary["notes"])
    assert set(summary["label_counts"]) <= {"pancreatic A cell", "type B pancreatic cell"}


def test_annotate_cells_reports_agreement_with_known_labels(env):
    result = call(env["server"], "annotate_cells", {"h5ad_path": "planted.h5ad", "candidates": CANDIDATES,
                                                    "compare_key": "cell_type"})
    summary = check_structured(env["server"], "annotate_cells", result)["result"]
    csv = pd.read_csv(next(f["path"] for f in summary["outputs"] if f["kind"] == "labels_csv"), index_col="cell")
    known = ad.read_h5ad(env["paths"]["planted"]).obs["cell_type"].astype(str)
    expected = float((csv["label"].to_numpy() == known.to_numpy()).mean())
    agreement = summary["agreement"]
    assert agreement["compare_key"] == "cell_type" and agreement["n_compared"] == N_CELLS
    assert agreement["agreement"] == pytest.approx(expected, abs=1e-4)
    assert set(agreement["per_label"]) == set(known) and expected > 0.5  # planted; chance 0.25
    h5 = ad.read_h5ad(next(f["path"] for f in summary["outputs"] if f["kind"] == "annotated_h5ad"))
    assert h5.uns["instructcell"]["agreement"]["agreement"] == pytest.approx(expected, abs=1e-4)
    assert sorted(h5.uns["instructcell"]["agreement"]["per_label"]["known"]) == sorted(set(known))
    text = error_text(call(env["server"], "annotate_cells", {"h5ad_path": "planted.h5ad", "compare_key": "celltype"}))
    assert "no column 'celltype'" in text


def test_annotate_cells_checks_the_answers_against_known_markers(env):
    result = call(env["server"], "annotate_cells", {"h5ad_path": "planted.h5ad", "candidates": CANDIDATES,
                                                    "marker_check": "cellmarker2", "plot": False})
    summary = check_structured(env["server"], "annotate_cells", result)["result"]
    rows = summary["marker_check"]
    assert sorted(r["label"] for r in rows) == sorted(summary["label_counts"])
    assert sum(r["n_cells"] for r in rows) == N_CELLS
    # the planted genes (GENE000...) are none of the database's markers of these pancreas names
    assert {r["support"] for r in rows} == {"no known markers"} and all(r["auroc"] is None for r in rows)
    h5 = ad.read_h5ad(next(f["path"] for f in summary["outputs"] if f["kind"] == "annotated_h5ad"))
    assert sorted(h5.uns["instructcell_marker_check"]["label"]) == sorted(summary["label_counts"])
    assert "instructcell_marker_score" in h5.obs
    plain = check_structured(env["server"], "annotate_cells", call(
        env["server"], "annotate_cells", {"h5ad_path": "planted.h5ad", "candidates": CANDIDATES, "plot": False}))
    assert plain["result"]["marker_check"] is None
    text = error_text(call(env["server"], "annotate_cells", {"h5ad_path": "planted.h5ad", "marker_check": "scType"}))
    assert "panglaodb" in text


def test_annotate_cells_by_markers_answers_from_the_markers_given_over_the_whole_file(env):
    from synthetic import marker_genes

    markers = {t: marker_genes(t) for t in CELL_TYPES}
    result = call(env["server"], "annotate_cells", {"h5ad_path": "planted.h5ad", "by_markers": "panglaodb",
                                                    "markers": markers, "compare_key": "cell_type", "plot": False})
    summary = check_structured(env["server"], "annotate_cells", result)["result"]
    assert summary["candidates"] == CANDIDATES and summary["agreement"]["agreement"] >= 0.95
    assert any("known markers alone" in note for note in summary["notes"])
    h5 = ad.read_h5ad(next(f["path"] for f in summary["outputs"] if f["kind"] == "annotated_h5ad"))
    assert h5.uns["instructcell"]["candidate_route"] == "known markers"
    # scored whole, not in the server's chunks: the API on the whole file gives the same probabilities
    from instructcell_agent.interpret.marker_annotation import annotate_by_markers

    cells = ad.read_h5ad(env["paths"]["planted"])
    direct = annotate_by_markers(cells, CANDIDATES, markers=markers, model=env["toolbox"].service.config.checkpoint)
    assert np.allclose(h5.obsm["instructcell_probabilities"], direct.probabilities.to_numpy(), atol=1e-6)
    for arguments, expected in (({"markers": markers}, "set by_markers"),
                                ({"by_markers": "panglaodb", "markers": markers, "fast": True}, "fast does not apply"),
                                ({"by_markers": "panglaodb"}, "candidates (or markers)")):
        text = error_text(call(env["server"], "annotate_cells", {"h5ad_path": "planted.h5ad", **arguments}))
        assert expected in text, text


def test_annotate_cells_answers_types_the_model_never_learned_from_their_markers(env):
    from synthetic import LIVER_TYPES, make_liver_like

    cells = make_liver_like(N_CELLS, seed=7)  # more cells than a chunk: scored whole, as the API scores them
    cells.write_h5ad(env["paths"]["root"] / "liver_like.h5ad")
    result = call(env["server"], "annotate_cells", {"h5ad_path": "liver_like.h5ad", "candidates": list(LIVER_TYPES),
                                                    "compare_key": "cell_type", "plot": False})
    summary = check_structured(env["server"], "annotate_cells", result)["result"]
    assert "none of the candidates is a type this checkpoint learned" in summary["notes"][0]
    assert summary["agreement"]["agreement"] >= 0.95
    h5 = ad.read_h5ad(next(f["path"] for f in summary["outputs"] if f["kind"] == "annotated_h5ad"))
    assert h5.uns["instructcell"]["candidate_route"] == "known markers"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct = ica.annotate(cells, model=env["toolbox"].service.model(), candidates=list(LIVER_TYPES))
    assert np.allclose(h5.obsm["instructcell_probabilities"], direct.probabilities.to_numpy(), atol=1e-6)
    fast = check_structured(env["server"], "annotate_cells", call(env["server"], "annotate_cells", {
        "h5ad_path": "liver_like.h5ad", "candidates": list(LIVER_TYPES), "fast": True, "plot": False}))["result"]
    h5 = ad.read_h5ad(next(f["path"] for f in fast["outputs"] if f["kind"] == "annotated_h5ad"))
    assert h5.uns["instructcell"]["candidate_route"] == "text"  # fast: an option only the model answers
    assert not any("none of the candidates is a type" in note for note in fast["notes"])
    # a marker check asks no model: the markers still answer, and the check says it read the same markers
    checked = check_structured(env["server"], "annotate_cells", call(env["server"], "annotate_cells", {
        "h5ad_path": "liver_like.h5ad", "candidates": list(LIVER_TYPES), "marker_check": "panglaodb",
        "plot": False}))["result"]
    h5 = ad.read_h5ad(next(f["path"] for f in checked["outputs"] if f["kind"] == "annotated_h5ad"))
    assert h5.uns["instructcell"]["candidate_route"] == "known markers"
    assert sorted(row["label"] for row in checked["marker_check"]) == sorted(LIVER_TYPES)
    assert any("answered from panglaodb's markers, the ones checked here" in note for note in checked["notes"])
    # the tissue named instead of its types: the same candidates inspect_dataset would list
    named = check_structured(env["server"], "annotate_cells", call(env["server"], "annotate_cells", {
        "h5ad_path": "liver_like.h5ad", "tissue_types": "liver", "plot": False}))["result"]
    assert named["candidates"] == ica.tissue_cell_types("liver")
    assert "no organ of the marker database" in error_text(call(env["server"], "annotate_cells", {
        "h5ad_path": "liver_like.h5ad", "tissue_types": "tumour"}))
    # the answers explained by the markers that gave them, and said so
    answered = next(f["path"] for f in summary["outputs"] if f["kind"] == "annotated_h5ad")
    explained = check_structured(env["server"], "explain_genes", call(env["server"], "explain_genes", {
        "h5ad_path": answered, "labels": "instructcell_label", "max_cells_per_label": 8}))
    found = explained["result"]
    assert sorted(found["explained_by_markers"]) == sorted(LIVER_TYPES)
    assert all(found["marker_precision"][t] is None for t in LIVER_TYPES)
    assert all(g["is_known_marker"] for t in LIVER_TYPES for g in found["top_genes"][t])


def test_annotate_cells_has_markers_scored_on_the_whole_file_decide_unlearned_candidates(env):
    from synthetic import make_mixed_tissue

    cells = make_mixed_tissue(N_CELLS, seed=7)
    cells = cells[np.argsort(cells.obs["cell_type"].astype(str).to_numpy(), kind="stable")].copy()  # chunks of one type
    cells.write_h5ad(env["paths"]["root"] / "mixed_tissue.h5ad")
    candidates = ["alpha", "beta", "Hepatocyte"]  # the checkpoint learned alpha and beta, never hepatocytes
    result = call(env["server"], "annotate_cells", {"h5ad_path": "mixed_tissue.h5ad", "candidates": candidates,
                                                    "compare_key": "cell_type", "plot": False})
    summary = check_structured(env["server"], "annotate_cells", result)["result"]
    assert summary["agreement"]["agreement"] >= 0.95
    assert "known markers" in summary["notes"][0]
    h5 = ad.read_h5ad(next(f["path"] for f in summary["outputs"] if f["kind"] == "annotated_h5ad"))
    assert h5.uns["instructcell"]["candidate_route"] == "ontology"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct = ica.annotate(cells, model=env["toolbox"].service.model(), candidates=candidates)
    assert np.allclose(h5.obsm["instructcell_probabilities"], direct.probabilities.to_numpy(), atol=1e-5)
    fast = check_structured(env["server"], "annotate_cells", call(env["server"], "annotate_cells", {
        "h5ad_path": "mixed_tissue.h5ad", "candidates": candidates, "fast": True, "plot": False}))["result"]
    assert "known markers" in fast["notes"][0]  # the model still answers, so its options apply


def test_annotate_cells_says_what_each_group_was_answered(env):
    result = call(env["server"], "annotate_cells", {"h5ad_path": "planted.h5ad", "candidates": CANDIDATES,
                                                    "groupby": "cell_type", "plot": False})
    summary = check_structured(env["server"], "annotate_cells", result)["result"]
    csv = pd.read_csv(next(f["path"] for f in summary["outputs"] if f["kind"] == "labels_csv"), index_col="cell")
    known = ad.read_h5ad(env["paths"]["planted"]).obs["cell_type"].astype(str).to_numpy()
    groups = {g["group"]: g for g in summary["groups"]}
    assert set(groups) == set(known)
    for name, group in groups.items():
        answers = csv["label"][known == name].value_counts()
        assert group["n_cells"] == (known == name).sum() and group["answer"] == answers.index[0]
        assert group["share"] == pytest.approx(answers.iloc[0] / group["n_cells"], abs=1e-4)
    h5 = ad.read_h5ad(next(f["path"] for f in summary["outputs"] if f["kind"] == "annotated_h5ad"))
    assert h5.uns["instructcell"]["composition"]["key"] == "cell_type"
    text = error_text(call(env["server"], "annotate_cells", {"h5ad_path": "planted.h5ad", "groupby": "cluster"}))
    assert "no column 'cluster'" in text


def test_annotate_cells_can_leave_low_confidence_cells_unassigned(env):
    result = call(env["server"], "annotate_cells", {"h5ad_path": "planted.h5ad", "candidates": CANDIDATES,
                                                    "unassigned_below": 1.0, "compare_key": "cell_type"})
    summary = check_structured(env["server"], "annotate_cells", result)["result"]
    assert summary["label_counts"] == {"Unassigned": N_CELLS} and summary["unassigned_cells"] == N_CELLS
    assert summary["agreement"]["n_compared"] == 0 and any("'Unassigned'" in n for n in summary["notes"])
    assert "unassigned_below" in error_text(call(env["server"], "annotate_cells",
                                                 {"h5ad_path": "planted.h5ad", "unassigned_below": 0}))


def test_annotate_cells_resolves_unsure_cells_to_a_broader_type_over_every_chunk(env, gen_checkpoint):
    # a fifth candidate outside the planted endocrine types: cells torn between those climb to the type
    cands, at = [*CANDIDATES, "hepatocyte"], 0.99
    result = call(env["server"], "annotate_cells", {"h5ad_path": "planted.h5ad", "candidates": cands,
                                                    "resolve_at": at, "compare_key": "cell_type", "plot": False,
                                                    "groupby": "cell_type"})
    summary = check_structured(env["server"], "annotate_cells", result)["result"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        direct = ica.annotate(ad.read_h5ad(env["paths"]["root"] / "planted.h5ad"),
                              model=ica.load_model(gen_checkpoint), candidates=cands, resolve_at=at)
    assert N_CELLS > 64  # more than one chunk of the test server's 64 cells
    expected = direct.resolved["resolved"].value_counts()
    assert summary["resolved_counts"] == {str(k): int(v) for k, v in expected.items()}
    assert summary["resolved_counts"].get("pancreatic endocrine cell", 0) > 0
    known = ad.read_h5ad(env["paths"]["planted"]).obs["cell_type"]
    assert summary["resolved_agreement"] == pytest.approx(direct.resolved_agreement(known).agreement, abs=1e-4)
    assert all(e["resolved"] is not None for e in summary["examples"])
    by_type = direct.composition(known, "cell_type", resolved=True).table
    assert {g["group"]: g["answer"] for g in summary["resolved_groups"]} == dict(by_type["answer"])
    assert any(n.startswith(f"resolved at {at:g} ") for n in summary["notes"])
    h5 = ad.read_h5ad(next(f["path"] for f in summary["outputs"] if f["kind"] == "annotated_h5ad"))
    assert list(h5.obs["instructcell_resolved"].astype(str)) == list(direct.resolved["resolved"].astype(str))
    assert "resolve_at" in error_text(call(env["server"], "annotate_cells",
                                           {"h5ad_path": "planted.h5ad", "resolve_at": 0.5}))


def test_annotate_cells_fast_counts_the_cells_the_readout_answered_over_every_chunk(env, gen_checkpoint, monkeypatch):
    import re

    from instructcell_agent.core_model import readout_first

    # the planted file is another draw than the tiny model's training cells, mildly atypical of
    # them: at fast's own bar none would skip the language model, and the counting is what is tested
    monkeypatch.setattr(readout_first, "FAST_TYPICAL_BELOW", -3.0)
    result = call(env["server"], "annotate_cells", {"h5ad_path": "planted.h5ad", "candidates": CANDIDATES,
                                                    "fast": True})
    summary = check_structured(env["server"], "annotate_cells", result)["result"]
    line = next(n for n in summary["notes"] if n.startswith("fast: "))
    n_sure, n_cells = map(int, re.match(r"fast: (\d+) of (\d+) cells", line).groups())
    direct = ica.annotate(ad.read_h5ad(env["paths"]["root"] / "planted.h5ad"), model=ica.load_model(gen_checkpoint),
                          candidates=CANDIDATES, fast=True)
    assert n_cells == N_CELLS > 64  # more than one chunk of the test server's 64 cells
    assert n_sure == direct.provenance["fast"]["cells_answered_by_readout_alone"] > 0
    csv = pd.read_csv(next(f["path"] for f in summary["outputs"] if f["kind"] == "labels_csv"), index_col="cell")
    assert (csv["answered_by"] == "read-out alone").sum() == n_sure  # per cell, over every chunk
    plain = check_structured(env["server"], "annotate_cells", call(env["server"], "annotate_cells", {
        "h5ad_path": "planted.h5ad", "candidates": CANDIDATES}))["result"]
    assert not any(n.startswith("fast: ") for n in plain["notes"])


def test_annotate_cells_counts_the_cells_of_a_type_the_candidates_lack_over_every_chunk(env):
    left_out = CANDIDATES[-1]
    result = call(env["server"], "annotate_cells", {"h5ad_path": "planted.h5ad", "candidates": CANDIDATES[:-1]})
    summary = check_structured(env["server"], "annotate_cells", result)["result"]
    truth = ad.read_h5ad(env["paths"]["root"] / "planted.h5ad").obs["cell_type"].astype(str).to_numpy()
    assert list(summary["outside_candidates"]) == [left_out]
    assert summary["outside_candidates"][left_out] >= 0.8 * (truth == left_out).sum()
    lacking = [n for n in summary["notes"] if "candidates lack" in n]
    assert len(lacking) == 1 and f"'{left_out}'" in lacking[0]  # one note for the file, not one per chunk
    full = check_structured(env["server"], "annotate_cells", call(env["server"], "annotate_cells", {
        "h5ad_path": "planted.h5ad", "candidates": CANDIDATES}))["result"]
    assert full["outside_candidates"] == {} and not any("candidates lack" in n for n in full["notes"])


def test_annotate_cells_counts_and_can_unassign_atypical_cells(env):
    # 20 cells of the training batch's types, then the same cells turned into a type never learned
    cells = make_counts(240, seed=0)[200:220].copy()
    cells = ad.concat([cells, cells.copy()], index_unique="-")
    cells.X = sp.vstack([cells.X[:20], novel_counts(cells.X[20:])], format="csr")
    cells.write_h5ad(env["paths"]["root"] / "with_novel.h5ad")
    args = {"h5ad_path": "with_novel.h5ad", "candidates": CANDIDATES}
    plain = check_structured(env["server"], "annotate_cells", call(env["server"], "annotate_cells", args))["result"]
    csv = pd.read_csv(next(f["path"] for f in plain["outputs"] if f["kind"] == "labels_csv"), index_col="cell")
    low = csv["typicality"].to_numpy() < -3
    assert plain["atypical_cells"] == low.sum() and low[20:].mean() > 0.5 and low[:20].mean() < 0.2
    assert all(e["typicality"] is not None for e in plain["examples"]) and plain["unassigned_cells"] == 0
    result = call(env["server"], "annotate_cells", {**args, "unassigned_atypical": 3})
    summary = check_structured(env["server"], "annotate_cells", result)["result"]
    assert summary["label_counts"].get("Unassigned") == low.sum() == summary["unassigned_cells"]
    assert "unassigned_atypical" in error_text(call(env["server"], "annotate_cells",
                                                    {**args, "unassigned_atypical": -1}))


def test_cells_without_counts_come_back_unlabelled(env):
    # 130 cells, chunks of 64: one chunk holds only empty cells, another a single one
    cells = make_counts(130, seed=7)
    X = cells.X.toarray()
    X[[3] + list(range(64, 128))] = 0
    cells.X = sp.csr_matrix(X)
    cells.write_h5ad(env["paths"]["root"] / "emptied.h5ad")
    result = call(env["server"], "annotate_cells", {"h5ad_path": "emptied.h5ad", "candidates": CANDIDATES})
    summary = check_structured(env["server"], "annotate_cells", result)["result"]
    assert summary["unlabelled_cells"] == 65 and sum(summary["label_counts"].values()) == 65
    assert 0 < summary["mean_confidence"] <= 1 and all(e["label"] in CANDIDATES for e in summary["examples"])
    assert any("left unlabelled" in n for n in summary["notes"])
    csv = pd.read_csv(next(f["path"] for f in summary["outputs"] if f["kind"] == "labels_csv"), index_col="cell")
    assert csv["label"].isna().sum() == 65 and csv["p_alpha"].isna().sum() == 65


def test_predict_drug_response(env):
    result = call(env["server"], "predict_drug_response", {"h5ad_path": "sub/planted_b.h5ad", "drug": "cisplatin"})
    summary = check_structured(env["server"], "predict_drug_response", result)["result"]
    assert summary["kind"] == "drug_response" and summary["drug"] == "cisplatin"
    assert set(summary["label_counts"]) <= {"resistant", "sensitive"}
    assert sum(summary["label_counts"].values()) == N_CELLS


def test_generate_cells(env):
    result = call(env["server"], "generate_cells", {"cell_type": "alpha", "n": 16, "condition": "stim", "seed": 3})
    summary = check_structured(env["server"], "generate_cells", result)["result"]
    assert summary["n_cells"] == 16 and summary["condition"] == "IFN-beta stimulated"
    assert summary["unseen_condition"] is False and len(summary["top_expressed_genes"]) == 10
    # what was generated, as the model learned it, and where it learned it
    assert summary["cell_type"] == summary["requested_cell_type"] == "alpha"
    assert (summary["species"], summary["tissue"]) == ("human", "pancreas") and summary["learned_from"]
    assert summary["notes"] == []
    generated = ad.read_h5ad(summary["outputs"][0]["path"])
    assert generated.n_obs == 16 and (generated.obs["cell_type"] == "alpha").all()
    # the generated file is an input too: annotated, against the type asked for
    answered = call(env["server"], "annotate_cells", {"h5ad_path": summary["outputs"][0]["path"],
                                                      "candidates": CANDIDATES, "compare_key": "cell_type"})
    agreement = check_structured(env["server"], "annotate_cells", answered)["result"]["agreement"]
    assert agreement["compare_key"] == "cell_type" and agreement["n_compared"] == 16


@pytest.mark.parametrize("reference, normalize", [(None, None), ("mean", "none")])
def test_explain_genes(env, reference, normalize):
    paths = env["paths"]
    small = paths["root"] / "small.h5ad"
    ad.read_h5ad(paths["planted"])[:48].copy().write_h5ad(small)
    args = {"h5ad_path": str(small), "labels": "cell_type", "top_k": 5}
    if reference is not None:
        args.update(reference=reference, normalize=normalize)
    result = call(env["server"], "explain_genes", args)
    summary = check_structured(env["server"], "explain_genes", result)["result"]
    assert set(summary["top_genes"]) == set(CELL_TYPES) and summary["n_cells"] == 48
    assert summary["reference"] == (reference or "train") and summary["normalize"] == (normalize or "minmax")
    assert all(1 <= len(genes) <= 5 for genes in summary["top_genes"].values())
    kinds = {f["kind"] for f in summary["outputs"]}
    assert {"explanation:explained", "explanation:top_genes"} <= kinds
    assert any(f["mime_type"] == "image/png" for f in summary["outputs"])
    png = next(f for f in summary["outputs"] if f["mime_type"] == "image/png")
    blob = run(env["server"], lambda c: c.read_resource(png["uri"]))
    assert blob.contents[0].mime_type == "image/png" and blob.contents[0].blob


def test_explain_genes_contrasts_each_answer_with_its_runner_up(env):
    paths = env["paths"]
    small = paths["root"] / "small_versus.h5ad"
    ad.read_h5ad(paths["planted"])[:24].copy().write_h5ad(small)
    args = {"h5ad_path": str(small), "labels": "cell_type", "candidates": CANDIDATES, "top_k": 3}
    summary = check_structured(env["server"], "explain_genes",
                               call(env["server"], "explain_genes", {**args, "versus": "runner-up"}))["result"]
    pairs = [label.split(" vs ") for label in summary["top_genes"]]
    assert pairs and all(len(p) == 2 and p[0] != p[1] and set(p) <= set(CANDIDATES) for p in pairs)
    assert sum(summary["cells_per_label"].values()) == summary["n_explained"] == 24
    # one named label: its own cells are left out, the others grouped against it
    named = check_structured(env["server"], "explain_genes",
                             call(env["server"], "explain_genes", {**args, "versus": CANDIDATES[0]}))["result"]
    assert all(label.endswith(f" vs {CANDIDATES[0]}") for label in named["top_genes"])
    assert named["n_explained"] < 24 and any("nothing to contrast" in note for note in named["notes"])
    refused = call(env["server"], "explain_genes", {**args, "versus": "hepatocyte"})
    assert "among the candidates" in error_text(refused)


def test_explain_genes_bounds_the_cells_of_each_label(env, monkeypatch):
    # the planted file is over the explain limit (120 cells); ten of each of its four labels are not
    args = {"h5ad_path": "planted.h5ad", "labels": "cell_type", "top_k": 3}
    assert "at most 120 allowed" in error_text(call(env["server"], "explain_genes", args))
    result = call(env["server"], "explain_genes", {**args, "max_cells_per_label": 10})
    summary = check_structured(env["server"], "explain_genes", result)["result"]
    assert summary["n_cells"] == N_CELLS and summary["n_explained"] == 40
    assert set(summary["cells_per_label"].values()) == {10}
    assert any("explained 40 of" in note for note in summary["notes"])
    # without labels the cells are answered first: at most ten of each of the four candidates
    answers = {"h5ad_path": "planted.h5ad", "candidates": CANDIDATES, "max_cells_per_label": 10, "top_k": 3}
    summary = check_structured(env["server"], "explain_genes", call(env["server"], "explain_genes", answers))["result"]
    assert 0 < summary["n_explained"] <= 40 and max(summary["cells_per_label"].values()) <= 10
    assert any("were answered first" in note for note in summary["notes"])
    from instructcell_agent.core_model import readout_first

    # as in the fast count test: at fast's own bar none of the planted cells skip the language model
    monkeypatch.setattr(readout_first, "FAST_TYPICAL_BELOW", -3.0)
    fast = call(env["server"], "explain_genes", {**answers, "fast": True})
    fast = check_structured(env["server"], "explain_genes", fast)["result"]
    assert any("were answered first (annotate, fast: " in note for note in fast["notes"])
    # the bound counts every candidate: 31 of each of four (124) is over the limit, refused before any work
    over = {**answers, "max_cells_per_label": 31}
    assert "at most 120 allowed" in error_text(call(env["server"], "explain_genes", over))
    # answering every cell first falls under annotate_cells' cell limit too (700 cells, 600 allowed)
    big = call(env["server"], "explain_genes", {**answers, "h5ad_path": "big.h5ad", "max_cells_per_label": 2})
    assert "700 cells answered first" in error_text(big)


def test_an_annotated_output_can_be_explained_by_its_answers(env):
    """An unlabelled file's answers explained within the explain limit: annotate it, then explain
    the file annotate_cells wrote, a few cells of each answer."""
    result = call(env["server"], "annotate_cells", {"h5ad_path": "planted.h5ad", "candidates": CANDIDATES})
    summary = check_structured(env["server"], "annotate_cells", result)["result"]
    annotated = next(f["path"] for f in summary["outputs"] if f["kind"] == "annotated_h5ad")
    args = {"h5ad_path": annotated, "labels": "instructcell_label", "max_cells_per_label": 5, "top_k": 3}
    explained = check_structured(env["server"], "explain_genes", call(env["server"], "explain_genes", args))["result"]
    answered = {k: v for k, v in summary["label_counts"].items() if v}
    assert explained["cells_per_label"] == {label: min(5, n) for label, n in answered.items()}
    assert set(explained["top_genes"]) == set(answered)
    staging = env["paths"]["out"] / ".staging_probe"
    staging.mkdir(exist_ok=True)
    (staging / "half_written.h5ad").write_bytes(b"\x89HDF")
    assert "not a finished output" in error_text(call(env["server"], "inspect_dataset",
                                                      {"h5ad_path": str(staging / "half_written.h5ad")}))


def test_explain_genes_explains_drug_responses(env):
    args = {"h5ad_path": "planted.h5ad", "labels": "resistant", "candidates": ["resistant", "sensitive"],
            "drug": "erlotinib", "max_cells_per_label": 8, "top_k": 3}
    summary = check_structured(env["server"], "explain_genes", call(env["server"], "explain_genes", args))["result"]
    assert summary["n_explained"] == 8 and set(summary["top_genes"]) == {"resistant"}
    record = next(f["path"] for f in summary["outputs"] if f["kind"] == "explanation:explain")
    provenance = json.loads(open(record).read())["provenance"]
    assert (provenance["drug"], provenance["task"]) == ("erlotinib", "drug_response")
    assert "{drug}" in provenance["instruction"]


# ------------------------------------------------------------------ errors and limits


@pytest.mark.parametrize("path, message", [
    ("missing.h5ad", "no such file"),
    ("../outside/secret.h5ad", "outside the allowed data roots"),
    ("escape.h5ad", "outside the allowed data roots"),  # symlink pointing out of the root
    ("notes.txt", "holds a header and no data"),  # read as a count table, by its suffix
    ("folder.h5ad", "neither a zarr store nor a matrix folder"),
    ("fake.h5ad", "not an HDF5 file"),
])
def test_bad_paths_come_back_as_tool_errors(env, path, message):
    for tool in ("inspect_dataset", "annotate_cells"):
        text = error_text(call(env["server"], tool, {"h5ad_path": path}))
        assert message in text, text
    assert not any(p.endswith(".h5ad") for p in output_entries(env["paths"]["out"]) if "secret" in p)


def test_symlink_inside_the_root_is_allowed(env):
    info = check_structured(env["server"], "inspect_dataset",
                            call(env["server"], "inspect_dataset", {"h5ad_path": "alias.h5ad"}))
    assert info["h5ad_path"] == str(env["paths"]["planted"])


def test_limits_are_enforced_with_clear_messages(env):
    server = env["server"]
    text = error_text(call(server, "annotate_cells", {"h5ad_path": "big.h5ad"}))
    assert "700 cells per annotate_cells call, at most 600" in text
    text = error_text(call(server, "generate_cells", {"cell_type": "alpha", "n": 201}))
    assert "201 generated cells" in text and "at most 200" in text
    text = error_text(call(server, "explain_genes", {"h5ad_path": "planted.h5ad", "top_k": 5}))
    assert "240 cells per explain_genes call, at most 120" in text
    text = error_text(call(server, "explain_genes", {"h5ad_path": "big.h5ad", "top_k": 21}))
    assert "top_k" in text and "at most 20" in text
    text = error_text(call(server, "explain_genes", {"h5ad_path": "planted.h5ad", "top_k": 5000}))
    assert "top_k" in text and "less than or equal to 1000" in text  # the schema's absolute bound


def test_model_errors_come_back_as_tool_errors(env):
    text = error_text(call(env["server"], "generate_cells", {"cell_type": "alpha", "n": 4, "condition": "heat shock"}))
    assert "heat shock" in text
    text = error_text(call(env["server"], "annotate_cells", {"h5ad_path": "planted.h5ad", "layer": "nope"}))
    assert "no layer 'nope'" in text
    text = error_text(call(env["server"], "job_status", {"job_id": "0" * 32}))
    assert "no job" in text


# ------------------------------------------------------------------ jobs, progress, concurrency


def test_large_requests_return_a_job_id_at_once_and_can_be_polled(env):
    async def script(client):
        first = await client.call_tool("annotate_cells", {"h5ad_path": "async.h5ad", "candidates": CANDIDATES})
        job_id = first.structured_content["job"]["job_id"]
        for _ in range(2400):  # up to two minutes on a slow machine
            status = await client.call_tool("job_status", {"job_id": job_id})
            if status.structured_content["status"] in ("completed", "failed", "cancelled"):
                break
            await anyio.sleep(0.05)
        return first, status, await client.call_tool("job_result", {"job_id": job_id})

    first, status, result = run(env["server"], script)
    out = check_structured(env["server"], "annotate_cells", first)
    assert out["status"] in ("queued", "running") and out["result"] is None  # over async_threshold_cells
    info = check_structured(env["server"], "job_status", status)
    assert info["status"] == "completed" and info["progress"] == 1.0
    final = check_structured(env["server"], "job_result", result)
    assert final["result"]["kind"] == "annotation" and final["result"]["n_cells"] == 500


def test_progress_is_reported_per_chunk(env):
    seen = []

    async def on_progress(progress, total, message):
        seen.append((progress, total, message))

    result = call(env["server"], "annotate_cells", {"h5ad_path": "planted.h5ad"}, progress_callback=on_progress)
    assert not result.is_error
    assert seen and all(total == N_CELLS for _, total, _ in seen)
    assert [p for p, _, _ in seen] == sorted(p for p, _, _ in seen)  # monotone
    assert len(seen) >= 2  # 240 cells in chunks of 64: several reports, not only the end


def test_two_concurrent_calls_both_get_their_own_correct_result(env, gen_model):
    paths = env["paths"]
    results = {}

    async def one(client, key, path):
        results[key] = await client.call_tool("annotate_cells", {"h5ad_path": str(path), "candidates": CANDIDATES})

    async def script(client):
        async with anyio.create_task_group() as tg:
            tg.start_soon(one, client, "a", paths["planted"])
            tg.start_soon(one, client, "b", paths["planted_b"])

    run(env["server"], script)
    for key, path in (("a", paths["planted"]), ("b", paths["planted_b"])):
        summary = check_structured(env["server"], "annotate_cells", results[key])["result"]
        assert summary["h5ad_path"] == str(path)
        csv = pd.read_csv(next(f["path"] for f in summary["outputs"] if f["kind"] == "labels_csv"), index_col="cell")
        direct = ica.annotate(ad.read_h5ad(path), model=gen_model, candidates=CANDIDATES)
        assert list(csv["label"]) == list(direct.labels)


def test_cancelling_a_queued_job_leaves_no_output(env):
    toolbox, out = env["toolbox"], env["paths"]["out"]
    gate = threading.Event()
    blocker = toolbox.jobs.submit("blocker", lambda reporter: gate.wait(30))  # holds the single model worker
    before = output_entries(out)
    try:
        async def script(client):
            started = await client.call_tool("annotate_cells", {"h5ad_path": "planted.h5ad", "background": True})
            job_id = started.structured_content["job"]["job_id"]
            cancelled = await client.call_tool("cancel_job", {"job_id": job_id})
            return job_id, cancelled, await client.call_tool("job_result", {"job_id": job_id})

        job_id, cancelled, result = run(env["server"], script)
    finally:
        gate.set()
        blocker.wait(10)
    assert check_structured(env["server"], "cancel_job", cancelled)["status"] == "cancelled"
    assert check_structured(env["server"], "job_result", result)["result"] is None
    assert toolbox.jobs.get(job_id).status == "cancelled"
    assert output_entries(out) == before


def _cancel_during_call(env, monkeypatch, module, name, nth, tool, request):
    """Run `tool` as a job and cancel it while the `nth` call of module.name (a unit of its work)
    runs; returns (job, calls made). The output directory must be left as it was."""
    from instructcell_agent.server.toolbox import SPEC_BY_NAME

    real, calls, state = getattr(module, name), {"n": 0}, {}

    def call_then_cancel(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == nth:
            state["job"].cancel()
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, call_then_cancel)
    before = output_entries(env["paths"]["out"])
    job, _ = env["toolbox"].start(SPEC_BY_NAME[tool], request)
    state["job"] = job
    assert job.wait(60)
    assert output_entries(env["paths"]["out"]) == before  # no h5ad, CSV, folder or staging left
    return job, calls["n"]


def test_cancelling_a_running_job_between_chunks_leaves_no_partial_file(env, monkeypatch):
    import instructcell_agent.api as api
    from instructcell_agent.server.schemas import AnnotateCellsRequest

    job, calls = _cancel_during_call(env, monkeypatch, api, "annotate", 2, "annotate_cells",
                                     AnnotateCellsRequest(h5ad_path="planted.h5ad"))
    assert job.status == "cancelled" and calls == 2  # stopped at the next chunk boundary


def test_cancelling_the_request_cancels_its_job(env):
    toolbox = env["toolbox"]
    gate = threading.Event()
    blocker = toolbox.jobs.submit("blocker", lambda reporter: gate.wait(30))
    before = output_entries(env["paths"]["out"])
    try:
        async def script(client):
            with anyio.move_on_after(1.0):  # the client gives up: the SDK cancels the request
                await client.call_tool("annotate_cells", {"h5ad_path": "planted.h5ad"})
            await anyio.sleep(0.3)

        run(env["server"], script)
    finally:
        gate.set()
        blocker.wait(10)
    jobs = [j for j in toolbox.jobs._jobs.values() if j.tool == "annotate_cells" and j.created > blocker.created]
    assert jobs and jobs[-1].status == "cancelled"
    assert output_entries(env["paths"]["out"]) == before


def test_free_answers_are_counted_by_tissue_over_every_chunk(env):
    result = call(env["server"], "annotate_cells", {"h5ad_path": "planted.h5ad"})  # 240 cells, chunks of 64
    summary = check_structured(env["server"], "annotate_cells", result)["result"]
    assert summary["answer_tissues"] == {"pancreas": N_CELLS}
    scored = call(env["server"], "annotate_cells", {"h5ad_path": "planted.h5ad", "candidates": CANDIDATES})
    assert check_structured(env["server"], "annotate_cells", scored)["result"]["answer_tissues"] is None


def test_free_text_reaches_the_api(env, monkeypatch):
    import instructcell_agent.api as api

    seen = []
    real = api.annotate
    monkeypatch.setattr(api, "annotate", lambda *a, **kw: seen.append(kw.get("free_text")) or real(*a, **kw))
    result = call(env["server"], "annotate_cells", {"h5ad_path": "planted.h5ad", "free_text": True})
    assert not result.is_error and seen and all(seen)


def test_an_unexpected_failure_is_a_tool_error_naming_it(env, monkeypatch):
    def broken(request, reporter=None):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(env["toolbox"].service, "generate_cells", broken)
    text = error_text(call(env["server"], "generate_cells", {"cell_type": "alpha", "n": 2}))
    assert "internal error (RuntimeError: disk on fire)" in text


def test_cancelling_an_explain_job_between_batches_leaves_no_partial_output(env, monkeypatch):
    from synthetic import make_counts

    import instructcell_agent.interpret.attribution as attribution
    from instructcell_agent.server.schemas import ExplainGenesRequest

    make_counts(48, seed=9).write_h5ad(env["paths"]["root"] / "explain_small.h5ad")  # 3 batches of 16
    job, calls = _cancel_during_call(env, monkeypatch, attribution, "_one_batch", 1, "explain_genes",
                                     ExplainGenesRequest(h5ad_path="explain_small.h5ad"))
    assert job.status == "cancelled" and calls == 1  # stopped before the second of 3 batches


# ------------------------------------------------------------------ audit regressions


def test_an_unknown_argument_is_refused_not_ignored(env):
    # a misspelt "candidates" used to be dropped silently: the call ran with free answers
    tools = {t.name: t for t in run(env["server"], lambda c: c.list_tools()).tools}
    assert tools["annotate_cells"].input_schema.get("additionalProperties") is False
    before = output_entries(env["paths"]["out"])
    text = error_text(call(env["server"], "annotate_cells", {"h5ad_path": "planted.h5ad", "candidate": CANDIDATES}))
    assert "candidate" in text and "Extra inputs are not permitted" in text
    assert output_entries(env["paths"]["out"]) == before


def test_no_labelled_cell_gives_no_mean_confidence(env):
    cells = make_counts(12, seed=11)
    cells.X = sp.csr_matrix(cells.shape, dtype=np.float32)
    cells.write_h5ad(env["paths"]["root"] / "all_empty.h5ad")
    result = call(env["server"], "annotate_cells", {"h5ad_path": "all_empty.h5ad", "candidates": CANDIDATES})
    summary = check_structured(env["server"], "annotate_cells", result)["result"]
    assert summary["unlabelled_cells"] == 12 and summary["label_counts"] == {} and summary["examples"] == []
    assert summary["mean_confidence"] is None  # not 0.0, which reads as a confident "unsure"


def test_explain_counts_only_the_cells_it_averaged(env):
    cells = make_counts(32, seed=12)
    X = cells.X.toarray()
    X[:5] = 0
    cells.X = sp.csr_matrix(X)
    cells.write_h5ad(env["paths"]["root"] / "explain_emptied.h5ad")
    result = call(env["server"], "explain_genes", {"h5ad_path": "explain_emptied.h5ad", "labels": "cell_type",
                                                   "top_k": 3})
    summary = check_structured(env["server"], "explain_genes", result)["result"]
    assert sum(summary["cells_per_label"].values()) == 27  # the 5 empty cells are left out of the means
    assert any("5 cells with no counts" in n for n in summary["notes"])


def test_cancelling_a_running_job_says_it_is_stopping(env):
    gate = threading.Event()
    job = env["toolbox"].jobs.submit("blocker", lambda reporter: gate.wait(30))
    try:
        for _ in range(200):
            if job.status == "running":
                break
            threading.Event().wait(0.05)
        info = check_structured(env["server"], "cancel_job", call(env["server"], "cancel_job", {"job_id": job.id}))
        assert info["status"] == "running" and info["message"].startswith("cancelling")
    finally:
        gate.set()
        job.wait(10)
