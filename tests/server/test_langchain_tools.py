"""LangChain: native tools over the service, the MCP adapter, and an agent driven by a scripted
chat model (no network) that calls our tools and receives their results."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import anyio
import pytest
from langchain.agents import create_agent
from langchain_core.messages import ToolMessage
from mcp import Client

from instructcell_agent.langchain_tools import make_tools
from instructcell_agent.mcp_langchain import mcp_tools
from instructcell_agent.scripted_model import ScriptedChatModel, summarize
from instructcell_agent.server.mcp_app import build_server
from instructcell_agent.server.toolbox import Toolbox
from server_testkit import N_CELLS, make_config, make_data_root
from synthetic import CELL_TYPES

EXAMPLE = Path(__file__).parents[2] / "examples" / "agent_workflow.py"


@pytest.fixture(scope="module")
def env(tmp_path_factory, gen_checkpoint):
    paths = make_data_root(tmp_path_factory.mktemp("langchain"))
    toolbox = Toolbox(make_config(paths, gen_checkpoint))
    yield {"paths": paths, "toolbox": toolbox, "tools": make_tools(toolbox), "server": build_server(toolbox=toolbox)}
    toolbox.shutdown()


def tool_messages(state) -> dict[str, ToolMessage]:
    return {m.name: m for m in state["messages"] if isinstance(m, ToolMessage)}


PLAN = [
    ("describe_model", {}),
    ("inspect_dataset", {"h5ad_path": "planted.h5ad"}),
    ("annotate_cells", {"h5ad_path": "planted.h5ad", "candidates": list(CELL_TYPES)}),
    ("generate_cells", {"cell_type": "beta", "n": 8, "condition": "ctrl"}),
    ("explain_genes", {"h5ad_path": "../outside/secret.h5ad"}),  # refused: the agent sees why
]


def check_agent_state(state):
    got = tool_messages(state)
    assert set(got) == {name for name, _ in PLAN}
    learned = json.loads(got["describe_model"].content)
    assert {g["cell_type"] for g in learned["generation"]} >= {"beta"}  # what generate_cells below draws
    info = json.loads(got["inspect_dataset"].content)
    assert info["n_cells"] == N_CELLS
    annotated = json.loads(got["annotate_cells"].content)["result"]
    assert sum(annotated["label_counts"].values()) == N_CELLS
    assert all(Path(f["path"]).exists() for f in annotated["outputs"])
    assert json.loads(got["generate_cells"].content)["result"]["n_cells"] == 8
    refused = got["explain_genes"]
    assert refused.status == "error" and "outside the allowed data roots" in refused.content
    final = state["messages"][-1].content
    assert f"annotate_cells: {N_CELLS} cells" in final and "generate_cells: 8 beta cells" in final


def test_native_tools_mirror_the_mcp_tools(env):
    listed = anyio.run(lambda: _list(env["server"]))
    assert [t.name for t in env["tools"]] == [t.name for t in listed]
    for native, remote in zip(env["tools"], listed):
        assert native.description == remote.description
        schema = native.tool_call_schema.model_json_schema()
        assert set(schema["properties"]) == set(remote.input_schema["properties"])
        for name, prop in remote.input_schema["properties"].items():
            for bound in ("minimum", "maximum", "maxLength", "minItems", "maxItems"):
                assert schema["properties"][name].get(bound) == prop.get(bound), (native.name, name, bound)


async def _list(server):
    async with Client(server) as client:
        return (await client.list_tools()).tools


def test_native_tool_returns_json_and_artifact(env):
    tool = next(t for t in env["tools"] if t.name == "inspect_dataset")
    message = tool.invoke({"type": "tool_call", "name": tool.name, "id": "1", "args": {"h5ad_path": "planted.h5ad"}})
    assert json.loads(message.content)["n_genes"] == 120 and message.artifact["n_cells"] == N_CELLS
    # unknown arguments are refused, not ignored (as a ToolMessage the agent reads, not an exception)
    refused = tool.invoke({"type": "tool_call", "name": tool.name, "id": "2",
                           "args": {"h5ad_path": "planted.h5ad", "surprise": 1}})
    assert refused.status == "error" and "Extra inputs are not permitted" in refused.content


def test_scripted_agent_calls_the_native_tools(env):
    agent = create_agent(ScriptedChatModel(plan=PLAN), env["tools"])
    state = agent.invoke({"messages": [("user", "Annotate planted.h5ad and generate some beta cells.")]})
    check_agent_state(state)


def test_scripted_agent_calls_the_tools_through_mcp(env):
    async def main():
        async with mcp_tools(env["server"]) as tools:
            assert {t.name for t in tools} >= {name for name, _ in PLAN}
            agent = create_agent(ScriptedChatModel(plan=PLAN), tools)
            return await agent.ainvoke({"messages": [("user", "Annotate planted.h5ad.")]})

    check_agent_state(anyio.run(main))


def test_example_workflow_runs_end_to_end(env, gen_checkpoint, tmp_path):
    spec = importlib.util.spec_from_file_location("agent_workflow_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    answer = example.main(["--data", str(env["paths"]["planted"]), "--checkpoint", str(gen_checkpoint),
                           "--output-dir", str(tmp_path / "out"), "--explain-cells", "300"])
    assert "inspect_dataset: 240 cells x 120 genes" in answer
    assert "annotate_cells: 240 cells" in answer and "explain_genes: top genes" in answer
    assert "agreement with obs['cell_type']" in answer  # the file's own labels were passed as compare_key
    assert "; resolved: " in answer and "right for obs['cell_type']" in answer  # and resolve_at
    explained = list((tmp_path / "out").glob("*_annotated_*_explain_*/explain.json"))  # the annotated file's
    assert len(explained) == 1
    notes = " ".join(json.loads(explained[0].read_text())["provenance"]["notes"])
    assert f"at most {example.EXPLAIN_PER_LABEL} per label" in notes


def test_the_scripted_summary_names_the_labels_markers_do_not_support():
    def reply(rows):
        result = {"n_cells": 10, "label_counts": {"B": 6, "CD4T": 4}, "mean_confidence": 0.9, "marker_check": rows}
        return ToolMessage(json.dumps(result), tool_call_id="1", name="annotate_cells")

    def row(label, auroc, support):
        return {"label": label, "auroc": auroc, "support": support}

    weak = summarize([reply([row("CD4T", 0.55, "not supported"), row("B", 0.97, "supported")])])
    assert "markers do not single out: CD4T (0.55)" in weak and "B (0.97)" not in weak
    assert "markers support every checked label" in summarize([reply([row("B", 0.97, "supported")])])
    unchecked = summarize([reply([row("B", None, "no known markers")])])  # nothing measured: nothing claimed
    assert "markers" not in unchecked


def test_native_tool_argument_errors_come_back_as_tool_messages(env):
    # raised, a ValidationError ends the agent's run; as a ToolMessage the agent can fix its call
    tools = {t.name: t for t in env["tools"]}
    for name, args, expected in [("annotate_cells", {"h5ad_path": "planted.h5ad", "candidate": ["a", "b"]}, "candidate"),
                                 ("predict_drug_response", {"h5ad_path": "planted.h5ad"}, "drug"),
                                 ("annotate_cells", {"h5ad_path": "planted.h5ad", "tissue_types": "tumour"},
                                  "no organ of the marker database is known as 'tumour'")]:
        msg = tools[name].invoke({"type": "tool_call", "id": "1", "name": name, "args": args})
        assert isinstance(msg, ToolMessage) and msg.status == "error"
        assert "invalid arguments" in msg.content and expected in msg.content


def test_the_example_agent_names_a_tissues_types_where_no_learned_set_matches():
    spec = importlib.util.spec_from_file_location("agent_workflow_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    plan = example.scripted_model("liver.h5ad").plan
    annotate_args = dict(plan)["annotate_cells"]
    info = {"n_cells": 20, "matching_label_sets": {}, "tissue_cell_types": ["Hepatocytes", "Kupffer cells"],
            "obs_columns": [{"name": "annotation"}, {"name": "cell_type"}]}
    args = annotate_args([ToolMessage(json.dumps(info), tool_call_id="1", name="inspect_dataset")])
    assert args["candidates"] == ["Hepatocytes", "Kupffer cells"]
    assert args["compare_key"] == "cell_type"  # the cell-type column before a free-text annotation
    info["matching_label_sets"] = {"planted": list(CELL_TYPES)}  # a learned set wins
    args = annotate_args([ToolMessage(json.dumps(info), tool_call_id="1", name="inspect_dataset")])
    assert args["candidates"] == list(CELL_TYPES)
