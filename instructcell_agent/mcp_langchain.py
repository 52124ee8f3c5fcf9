"""Load an MCP server's tools into LangChain through the official `mcp` client.

`langchain.mcp` (LangChain's own adapter) needs FastMCP, about 30 more packages, and
`langchain-mcp-adapters` 0.3 pins `mcp<2`; this small adapter works on the `mcp` 2.x `Client`
that the server tests already use. It wraps each listed tool as an async StructuredTool whose
argument schema is the tool's JSON input schema.

    from mcp import StdioServerParameters
    from instructcell_agent.mcp_langchain import mcp_tools

    params = StdioServerParameters(command="instructcell-mcp", args=["--data-root", "data", "--output-dir", "out"])
    async with mcp_tools(params) as tools:
        agent = create_agent(model, tools)
        await agent.ainvoke({"messages": [("user", "Annotate data/pbmc.h5ad")]})
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from langchain_core.tools import StructuredTool, ToolException
from mcp import Client
from mcp_types import Tool


async def load_mcp_tools(client: Client) -> list[StructuredTool]:
    """Every tool `client`'s server lists, as LangChain tools calling through `client`."""
    listed = await client.list_tools()
    return [as_langchain_tool(client, tool) for tool in listed.tools]


def as_langchain_tool(client: Client, tool: Tool) -> StructuredTool:
    async def call(**arguments: Any) -> tuple[str, Any]:
        result = await client.call_tool(tool.name, arguments)
        text = "\n".join(block.text for block in result.content if getattr(block, "type", "") == "text")
        if result.is_error:
            raise ToolException(text or f"{tool.name} failed")
        if result.structured_content is not None:
            return json.dumps(result.structured_content), result.structured_content
        return text, None

    return StructuredTool(
        name=tool.name, description=tool.description or "", args_schema=tool.input_schema, coroutine=call,
        func=None, response_format="content_and_artifact", handle_tool_error=True,
        metadata={"mcp_annotations": tool.annotations.model_dump(exclude_none=True) if tool.annotations else {}})


@asynccontextmanager
async def http_transport(url: str, token: str | None = None):
    """A streamable HTTP transport to `url` that sends `Authorization: Bearer <token>`."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {token}"} if token else None
    # The SDK's defaults: 30 s to connect/write, 5 min to read (a response stream may idle).
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=300.0)) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            yield streams


@asynccontextmanager
async def mcp_tools(target: Any, token: str | None = None) -> AsyncIterator[list[StructuredTool]]:
    """Connect to `target` and yield its tools; the connection closes when the block ends.

    `target`: an http(s) URL (with `token`, sent as `Authorization: Bearer <token>`), an
    `mcp.StdioServerParameters` (the server runs as a subprocess), an in-process `MCPServer`,
    or an `mcp` transport.
    """
    if isinstance(target, str) and token:
        target = http_transport(target, token)
    async with Client(target) as client:
        yield await load_mcp_tools(client)
