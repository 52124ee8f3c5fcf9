"""The server as a real process: stdio, streamable HTTP with a bearer token, and an in-thread
HTTP server without one; plus the refusals the CLI makes before it starts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import anyio
import pytest
import uvicorn
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from instructcell_agent.mcp_langchain import http_transport
from instructcell_agent.server.cli import main as cli_main
from instructcell_agent.server.http_transport import TOKEN_ENV, http_app
from instructcell_agent.server.mcp_app import build_server
from server_testkit import N_CELLS, make_config, make_data_root

TOKEN = "test-token-1f3a9c"


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return make_data_root(tmp_path_factory.mktemp("transports"))


def server_args(paths, checkpoint, *extra):
    return ["-m", "instructcell_agent.server.cli", "--data-root", str(paths["root"]), "--output-dir",
            str(paths["out"]), "--checkpoint", str(checkpoint), "--device", "cpu", "--chunk-cells", "64", *extra]


def child_env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


async def annotate_and_inspect(client):
    tools = await client.list_tools()
    info = await client.call_tool("inspect_dataset", {"h5ad_path": "planted.h5ad"})
    annotated = await client.call_tool("annotate_cells", {"h5ad_path": "planted.h5ad",
                                                          "candidates": ["alpha", "beta", "gamma", "delta"]})
    return tools, info, annotated


def check_results(tools, info, annotated):
    assert len(tools.tools) == 9
    assert not info.is_error and info.structured_content["n_cells"] == N_CELLS
    assert not annotated.is_error, annotated.content[0].text
    summary = annotated.structured_content["result"]
    assert sum(summary["label_counts"].values()) == N_CELLS
    assert all(os.path.exists(f["path"]) for f in summary["outputs"])


def test_stdio_subprocess(paths, gen_checkpoint, tmp_path):
    params = StdioServerParameters(command=sys.executable, args=server_args(paths, gen_checkpoint),
                                   env=child_env())
    errlog = tmp_path / "stderr.log"

    async def main():
        with errlog.open("w") as err:
            async with Client(stdio_client(params, errlog=err)) as client:
                return await annotate_and_inspect(client)

    check_results(*anyio.run(main))
    log = errlog.read_text()
    assert "serving 9 tools over stdio" in log  # logs go to stderr; stdout carried only the protocol


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError("server did not start")


def post_status(url: str, headers: dict[str, str]) -> int:
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}'
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "content-type": "application/json", "accept": "application/json, text/event-stream", **headers})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def client_for(url: str, token: str | None = None) -> Client:
    return Client(http_transport(url, token))


def test_http_subprocess_requires_the_bearer_token(paths, gen_checkpoint):
    port = free_port()
    proc = subprocess.Popen([sys.executable, *server_args(paths, gen_checkpoint, "--transport", "http", "--port",
                                                          str(port))],
                            env=child_env(**{TOKEN_ENV: TOKEN}), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, proc)
        url = f"http://127.0.0.1:{port}/mcp"
        assert post_status(url, {}) == 401
        assert post_status(url, {"Authorization": "Bearer wrong"}) == 401
        assert post_status(url, {"Authorization": TOKEN}) == 401  # the scheme is part of the check

        async def main():
            async with client_for(url, TOKEN) as client:
                return await annotate_and_inspect(client)

        check_results(*anyio.run(main))

        async def without_token():
            async with client_for(url) as client:
                await client.list_tools()

        with pytest.raises(Exception):
            anyio.run(without_token)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_http_on_loopback_without_a_token(paths, gen_checkpoint):
    from instructcell_agent.server.toolbox import Toolbox

    toolbox = Toolbox(make_config(paths, gen_checkpoint))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(http_app(build_server(toolbox=toolbox), "127.0.0.1", None),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for_port(port)

        async def main():
            async with client_for(f"http://127.0.0.1:{port}/mcp") as client:
                return await annotate_and_inspect(client)

        check_results(*anyio.run(main))
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        toolbox.shutdown()


def test_cli_refuses_a_public_address_without_a_token(paths, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(SystemExit, match="without a bearer token"):
        cli_main(["--transport", "http", "--host", "0.0.0.0", "--data-root", str(paths["root"]),
                  "--output-dir", str(paths["out"])])
    with pytest.raises(SystemExit, match="between 0 and 55"):
        cli_main(["--data-root", str(paths["root"]), "--output-dir", str(paths["out"]), "--call-timeout", "120"])


def test_console_script_is_declared():
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["instructcell-mcp"] == "instructcell_agent.server.cli:main"
