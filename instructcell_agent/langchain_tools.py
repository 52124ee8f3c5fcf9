"""Native LangChain tools over the server's service layer (no MCP in between).

    from instructcell_agent.langchain_tools import make_tools
    from instructcell_agent.server.config import ServerConfig
    tools = make_tools(ServerConfig(data_roots=("data",), output_dir="outputs"))

The tools have the MCP tools' names, descriptions and argument schemas (the same pydantic
request models), the same path checks and limits, and the same job policy: a large request
returns a job id that `job_status` / `job_result` poll. Each tool returns the result as JSON text
for the model and as a dict artifact (`ToolMessage.artifact`) for code.
"""

from __future__ import annotations

import json
from typing import Any

import anyio.to_thread
from langchain_core.tools import StructuredTool, ToolException
from pydantic import ValidationError

from .server.config import ServerConfig
from .server.toolbox import SPECS, Toolbox, ToolFailure, ToolSpec


def make_tools(target: ServerConfig | Toolbox) -> list[StructuredTool]:
    """One StructuredTool per server tool. Pass a Toolbox to share its model and jobs."""
    toolbox = target if isinstance(target, Toolbox) else Toolbox(target)
    return [_tool(toolbox, spec) for spec in SPECS]


def _tool(toolbox: Toolbox, spec: ToolSpec) -> StructuredTool:
    def run(**arguments: Any) -> tuple[str, dict[str, Any]]:
        try:
            output = toolbox.call(spec.name, spec.request(**arguments))
        except ToolFailure as exc:
            # A ToolException becomes the ToolMessage (handle_tool_error=True), so an agent reads
            # what went wrong and can correct its call instead of the run ending.
            raise ToolException(str(exc)) from None
        data = output.model_dump(mode="json")
        return json.dumps(output.model_dump(mode="json", exclude_none=True)), data

    async def arun(**arguments: Any) -> tuple[str, dict[str, Any]]:
        return await anyio.to_thread.run_sync(lambda: run(**arguments))

    return StructuredTool.from_function(
        func=run, coroutine=arun, name=spec.name, description=toolbox.description(spec), args_schema=spec.request,
        response_format="content_and_artifact", handle_tool_error=True, handle_validation_error=_invalid_arguments,
        metadata={"read_only": spec.read_only, "title": spec.title})


def _invalid_arguments(exc: ValidationError) -> str:
    # Arguments an LLM got wrong (a misspelt option, top_k over the bound) come back as the
    # ToolMessage, as the MCP server reports them, so the agent can correct its call; raised,
    # they would end the run.
    return f"invalid arguments: {exc}"
