"""A LangChain agent that inspects a dataset, annotates its cells and explains the answers.

Runs offline by default: a scripted chat model plays the agent's turns (inspect_dataset, then
annotate_cells with a label set the model learned for the file's tissue, or that tissue's known
cell types where it learned none, then explain_genes on the file
annotate_cells wrote, 20 cells of each answer) and the real tools do the work. Give --model to let a real chat model decide instead (needs its provider
package and API key, e.g. --model anthropic:claude-sonnet-4-5 or --model openai:gpt-4.1).

    python examples/agent_workflow.py --data pbmc.h5ad                   # native tools, in process
    python examples/agent_workflow.py --data pbmc.h5ad --via stdio       # through the MCP server
    python examples/agent_workflow.py --data planted.h5ad --checkpoint runs/tiny/checkpoint

Without --data it uses 200 cells of the shared PBMC set when present
(${INSTRUCTCELL_SHARED:-../shared}/data/cta/zheng2017_pbmc_sorted.h5ad).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

from langchain.agents import create_agent

QUESTION = ("What cell types are in {path}, and which genes drive the model's answers? Check the file first, then "
            "annotate it and explain the labels.")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help=".h5ad file (its folder becomes the data root)")
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped checkpoint")
    p.add_argument("--output-dir", type=Path, default=None, help="default: a new temporary folder")
    p.add_argument("--via", choices=("native", "stdio"), default="native",
                   help="native LangChain tools in process, or the MCP server as a stdio subprocess")
    p.add_argument("--model", default=None, help="a real chat model for init_chat_model, e.g. openai:gpt-4.1")
    p.add_argument("--explain-cells", type=int, default=200, help="explain_genes cell limit (attribution is slow)")
    return p.parse_args(argv)


def default_data() -> Path:
    import anndata as ad

    from instructcell_agent.core_model.io import write_h5ad_atomic

    data = Path(os.environ.get("INSTRUCTCELL_SHARED", "../shared")) / "data"
    shared = data / "cta/zheng2017_pbmc_sorted.h5ad"
    if not shared.exists():
        raise SystemExit(f"no --data given and {shared} does not exist; pass --data FILE.h5ad")
    # 200 of the test split's cells, which the model never trained on, so the agreement the agent
    # reports (compare_key) is a held-out one
    test = json.loads((data / "splits/zheng2017_pbmc_sorted.json").read_text())["test"][:200]
    adata = ad.read_h5ad(shared, backed="r")
    subset = adata[adata.obs_names.get_indexer(test)].to_memory()
    out = Path(tempfile.mkdtemp(prefix="instructcell-agent-data-")) / "pbmc_200.h5ad"
    write_h5ad_atomic(subset, out)  # also under pandas 3's string columns
    return out


EXPLAIN_PER_LABEL = 20
KNOWN_LABEL_COLUMNS = ("cell_type", "celltype", "cell_types", "labels", "annotation", "bulk_labels")


def scripted_model(h5ad_path: str):
    from instructcell_agent.scripted_model import ScriptedChatModel, tool_results

    def annotate_args(messages):
        # An earlier result feeds the next call: the first label set inspect_dataset found for the
        # file's species and tissue becomes the candidates; for a tissue the model never learned,
        # that tissue's known cell types, answered from their known markers (none: free answers).
        # A column that looks like an author's cell types is passed as compare_key, for the agreement;
        # resolve_at adds each cell's finest sure answer (a broader type where fine ones are unsure);
        # marker_check, how well each label's known markers single out its cells.
        info = next(value for name, value in tool_results(messages) if name == "inspect_dataset")
        labels = next(iter(info.get("matching_label_sets", {}).values()), None) or info.get("tissue_cell_types", [])
        columns = {c["name"] for c in info.get("obs_columns", [])}
        known = next((c for c in KNOWN_LABEL_COLUMNS if c in columns), None)  # 'cell_type' before 'annotation'

        return {"h5ad_path": h5ad_path, **({"candidates": labels} if len(labels) >= 2 else {}),
                **({"compare_key": known} if known else {}), "resolve_at": 0.9, "marker_check": "panglaodb"}

    def explain_args(messages):
        # The model's answers explained: the file annotate_cells wrote holds them in
        # obs['instructcell_label']; a few cells of each answer keep attribution cheap on any file.
        done = next(value for name, value in tool_results(messages) if name == "annotate_cells")
        summary = done.get("result", done)
        annotated = next(f["path"] for f in summary["outputs"] if f["kind"] == "annotated_h5ad")
        return {"h5ad_path": annotated, "labels": "instructcell_label", "max_cells_per_label": EXPLAIN_PER_LABEL,
                "top_k": 5}

    return ScriptedChatModel(plan=[
        ("inspect_dataset", {"h5ad_path": h5ad_path}),
        ("annotate_cells", annotate_args),
        ("explain_genes", explain_args),
    ])


def chat_model(args, h5ad_path: str):
    if not args.model:
        return scripted_model(h5ad_path)
    from langchain.chat_models import init_chat_model

    return init_chat_model(args.model)


def server_settings(args, data: Path) -> tuple[Path, Path]:
    out = args.output_dir or Path(tempfile.mkdtemp(prefix="instructcell-agent-out-"))
    return data.resolve().parent, out


async def run(args) -> str:
    data = args.data or default_data()
    root, out = server_settings(args, data)
    model = chat_model(args, str(data.resolve()))
    question = QUESTION.format(path=data.resolve())
    if args.via == "native":
        from instructcell_agent.langchain_tools import make_tools
        from instructcell_agent.server.config import Limits, ServerConfig
        from instructcell_agent.server.toolbox import Toolbox

        toolbox = Toolbox(ServerConfig(data_roots=(root,), output_dir=out, checkpoint=args.checkpoint,
                                       limits=Limits(max_explain_cells=args.explain_cells)))
        try:
            agent = create_agent(model, make_tools(toolbox))
            state = await agent.ainvoke({"messages": [("user", question)]})
        finally:
            toolbox.shutdown()
    else:
        from mcp import StdioServerParameters

        from instructcell_agent.mcp_langchain import mcp_tools

        cli = ["-m", "instructcell_agent.server.cli", "--data-root", str(root), "--output-dir", str(out),
               "--max-explain-cells", str(args.explain_cells)]
        cli += ["--checkpoint", str(args.checkpoint)] if args.checkpoint else []
        params = StdioServerParameters(command=sys.executable, args=cli, env=dict(os.environ))
        async with mcp_tools(params) as tools:
            agent = create_agent(model, tools)
            state = await agent.ainvoke({"messages": [("user", question)]})
    return state["messages"][-1].content


def main(argv=None) -> str:
    answer = asyncio.run(run(parse_args(argv)))
    print(answer)
    return answer


if __name__ == "__main__":
    main()
