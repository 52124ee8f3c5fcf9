"""The MCP server: every `ToolSpec` registered on the official SDK's `MCPServer`.

Tool parameters are the request model's fields (flat, with their descriptions and bounds), the
output schema is the spec's output model, and result files are exposed as resources under
`instructcell://outputs/...`. Model work runs on the job queue; a waiting call relays the job's
progress as MCP progress notifications and cancels the job if the request is cancelled.
"""

from __future__ import annotations

import inspect
import logging
from typing import Annotated, Any

import anyio
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.server.mcpserver.resources import FunctionResource
from mcp.server.mcpserver.tools import Tool
from mcp_types import CallToolResult, ResourceLink, TextContent, ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import ServerConfig
from .jobs import Job
from .outputs import URI_PREFIX, mime_for
from .paths import PathNotAllowedError, resolve_output
from .prompts import register_prompts
from .schemas import OutputFile
from .toolbox import SPECS, Toolbox, ToolFailure, ToolSpec, error_message

log = logging.getLogger(__name__)

INSTRUCTIONS = (
    "InstructCell: a single-cell language model. Start with inspect_dataset on an .h5ad file (or a .zarr store, "
    "Cell Ranger's filtered_feature_bc_matrix .h5 or folder, a .csv/.tsv/.txt(.gz) count table, a .loom or "
    ".h5Seurat file) inside the server's data roots (describe_model lists what the model learned), then "
    "annotate_cells, predict_drug_response, explain_genes or generate_cells. "
    "Results come back as small summaries; full results are files (paths and instructcell:// resources). Large "
    "requests run as jobs: poll job_status, then job_result."
)
_TEXT_MIMES = ("text/", "application/json")


def build_server(config: ServerConfig | None = None, toolbox: Toolbox | None = None) -> MCPServer:
    """An MCPServer over `toolbox` (built from `config` when not given)."""
    if toolbox is None:
        if config is None:
            raise ValueError("build_server needs a ServerConfig or a Toolbox")
        toolbox = Toolbox(config)
    published: set[str] = set()

    def publish(files: list[OutputFile]) -> None:
        """List each new output file as a concrete resource (with its own MIME type)."""
        for f in files:
            if f.uri not in published:
                published.add(f.uri)
                server.add_resource(FunctionResource.from_function(
                    _reader(toolbox, f.uri[len(URI_PREFIX):]), uri=f.uri, name=f.uri[len(URI_PREFIX):],
                    description=f"{f.kind} ({f.size_bytes:,} bytes)", mime_type=f.mime_type))

    tools = [_strict(Tool.from_function(
        _tool_function(toolbox, spec, publish), name=spec.name, title=spec.title,
        description=toolbox.description(spec), structured_output=True,
        annotations=ToolAnnotations(title=spec.title, read_only_hint=spec.read_only,
                                    destructive_hint=spec.destructive, idempotent_hint=spec.idempotent,
                                    open_world_hint=False))) for spec in SPECS]
    server = MCPServer("instructcell", title="InstructCell", instructions=INSTRUCTIONS, version=_version(),
                       tools=tools)
    server.toolbox = toolbox  # type: ignore[attr-defined] - tests and the CLI reach the jobs through it
    register_prompts(server)

    @server.resource(URI_PREFIX + "{+name}", name="output", description="A result file under the output directory.")
    def read_output(name: str) -> str | bytes:
        return _reader(toolbox, name)()

    return server


def _strict(tool: Tool) -> Tool:
    """Refuse arguments the tool does not have, as the request models (and the LangChain tools) do.

    The SDK's argument model drops unknown keys, so a misspelt option ("candidate") would run the
    call without it (free answers instead of the candidates asked for) and nobody would know.
    """
    loose = tool.fn_metadata.arg_model
    strict = type(loose.__name__, (loose,), {"model_config": ConfigDict(extra="forbid"), "__module__": __name__})
    tool.fn_metadata.arg_model = strict
    tool.parameters = strict.model_json_schema(by_alias=True)  # publishes additionalProperties: false
    return tool


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("instructcell-agent")
    except Exception:  # noqa: BLE001 - running from a source tree without metadata
        return "0"


def _reader(toolbox: Toolbox, name: str):
    def read() -> str | bytes:
        try:
            path = resolve_output(name, toolbox.config.output_dir)
        except PathNotAllowedError as exc:
            raise ResourceError(str(exc)) from None
        size = path.stat().st_size
        if size > toolbox.config.limits.max_resource_bytes:
            raise ResourceError(f"{name} has {size:,} bytes, over the {toolbox.config.limits.max_resource_bytes:,} "
                                f"byte resource limit; read it from {path} on the server instead")
        mime = mime_for(path)
        return path.read_text() if mime.startswith(_TEXT_MIMES) else path.read_bytes()

    return read


def _tool_function(toolbox: Toolbox, spec: ToolSpec, publish):
    """An async function whose signature is the request model's fields, plus the MCP Context.

    The SDK builds the input schema from the signature, so the published schema carries the
    same descriptions and bounds as the pydantic request model the LangChain tools use.
    """

    async def tool(ctx: Context, **arguments: Any) -> CallToolResult:
        try:
            try:  # the request model's own checks (a tissue no organ stands for) read as the caller's error
                request = spec.request(**arguments)
            except ValidationError as exc:
                raise ToolFailure(error_message(exc)) from None
            if not spec.runs_model:
                output = await anyio.to_thread.run_sync(toolbox.run_quick, spec, request)
            else:
                job, background = await anyio.to_thread.run_sync(toolbox.start, spec, request)
                if not background:
                    await _wait(job, ctx, toolbox.config.limits.call_timeout_s)
                output = toolbox.output(spec, job)
        except ToolFailure as exc:
            raise ToolError(str(exc)) from None
        files = _output_files(output)
        publish(files)
        return _result(output, files)

    params = [inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context)]
    hints: dict[str, Any] = {"ctx": Context}
    for name, field in spec.request.model_fields.items():
        # Constraints live in field.metadata; a default inside Annotated is not allowed, so it
        # goes on the parameter instead.
        hint = Annotated[(field.annotation, *field.metadata, Field(description=field.description))]
        default = inspect.Parameter.empty if field.is_required() else field.get_default(call_default_factory=True)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=hint, default=default))
        hints[name] = hint
    returns = Annotated[CallToolResult, spec.output]
    tool.__signature__ = inspect.Signature(params, return_annotation=returns)  # type: ignore[attr-defined]
    tool.__annotations__ = {**hints, "return": returns}
    tool.__name__ = spec.name
    tool.__doc__ = spec.description
    return tool


async def _wait(job: Job, ctx: Context, timeout: float) -> None:
    """Wait for `job` up to `timeout`, relaying each progress update; cancel the job if the call is."""
    deadline = anyio.current_time() + timeout
    seen = 0
    try:
        while True:
            seen, updates = job.updates_since(seen)
            for done, total, message in updates:
                await ctx.report_progress(done, total, message)
            remaining = deadline - anyio.current_time()
            if job.finished.is_set() or remaining <= 0:
                return  # finished, or the caller gets the job id and polls
            await anyio.to_thread.run_sync(job.wait_for_update, seen, min(1.0, remaining), abandon_on_cancel=True)
    except anyio.get_cancelled_exc_class():
        job.cancel()  # a cancelled request must not keep the model busy or leave files
        raise


def _output_files(output: BaseModel) -> list[OutputFile]:
    result = getattr(output, "result", None)
    if result is None and isinstance(getattr(output, "outputs", None), list):
        result = output
    return list(getattr(result, "outputs", None) or [])


def _result(output: BaseModel, files: list[OutputFile]) -> CallToolResult:
    """Structured content plus the same JSON as text (for clients that read text) and resource links."""
    content: list[Any] = [TextContent(type="text", text=output.model_dump_json(exclude_none=True))]
    content += [ResourceLink(type="resource_link", uri=f.uri, name=f.uri[len(URI_PREFIX):], mime_type=f.mime_type,
                             size=f.size_bytes, description=f.kind) for f in files]
    return CallToolResult(content=content, structured_content=output.model_dump(mode="json"))
