"""`instructcell-mcp`: serve the InstructCell tools over MCP (stdio or streamable HTTP).

Logs go to stderr: on stdio, stdout carries the protocol and nothing else may be printed there.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .. import __version__
from ..core_model.precision import add_device_argument, add_precision_argument
from .http_transport import TOKEN_ENV, check_http_exposure


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="instructcell-mcp", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--transport", choices=("stdio", "http"), default="stdio")
    p.add_argument("--data-root", action="append", required=True, metavar="DIR",
                   help="folder whose cell files (.h5ad, .zarr, Cell Ranger .h5 or matrix folders, count tables) the "
                        "tools may read (repeatable)")
    p.add_argument("--output-dir", required=True, metavar="DIR", help="folder for result files")
    p.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the shipped one)")
    add_device_argument(p)
    add_precision_argument(p, "auto")
    p.add_argument("--host", default="127.0.0.1", help="HTTP bind address (non-loopback needs a token)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--path", default="/mcp", help="HTTP endpoint path")
    p.add_argument("--max-cells", type=int, help="cells per annotate/drug-response call")
    p.add_argument("--max-explain-cells", type=int, help="cells per explain_genes call")
    p.add_argument("--max-top-k", type=int)
    p.add_argument("--max-generate", type=int, help="generated cells per call")
    p.add_argument("--async-threshold", type=int, dest="async_threshold_cells",
                   help="requests over this many cells return a job id at once")
    p.add_argument("--call-timeout", type=float, dest="call_timeout_s",
                   help="seconds a call waits before returning its job id (at most 55)")
    p.add_argument("--chunk-cells", type=int, help="cells per model pass between progress/cancel checks")
    p.add_argument("--preload", action="store_true", help="load the model at start-up instead of on first use")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token = os.environ.get(TOKEN_ENV) or None
    if args.transport == "http":
        try:
            check_http_exposure(args.host, token)  # before the slow imports: fail fast
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
    for root in args.data_root:
        if not Path(root).is_dir():
            raise SystemExit(f"--data-root {root} is not a folder")
    if args.call_timeout_s is not None and not 0 < args.call_timeout_s <= 55:
        raise SystemExit("--call-timeout must be between 0 and 55 seconds (no call may block past a minute)")

    from .config import Limits, ServerConfig
    from .mcp_app import build_server
    from .toolbox import SPECS

    limit_names = ("max_cells", "max_explain_cells", "max_top_k", "max_generate", "async_threshold_cells",
                   "call_timeout_s", "chunk_cells")
    limits = Limits(**{k: getattr(args, k) for k in limit_names if getattr(args, k) is not None})
    config = ServerConfig(data_roots=tuple(Path(r) for r in args.data_root), output_dir=Path(args.output_dir),
                          checkpoint=Path(args.checkpoint) if args.checkpoint else None, device=args.device,
                          precision=args.precision, limits=limits)
    server = build_server(config)
    log = logging.getLogger("instructcell_agent.server")
    if args.preload:
        server.toolbox.service.model()
    log.info("serving %d tools over %s; data roots: %s; outputs: %s", len(SPECS), args.transport,
             ", ".join(map(str, config.data_roots)), config.output_dir)
    try:
        if args.transport == "stdio":
            server.run("stdio")
        else:
            _serve_http(server, args.host, args.port, token, args.path, args.log_level)
    finally:
        server.toolbox.shutdown()
    return 0


def _serve_http(server, host: str, port: int, token: str | None, path: str, log_level: str) -> None:
    import uvicorn

    from .http_transport import http_app

    app = http_app(server, host, token, path)
    logging.getLogger("instructcell_agent.server").info(
        "HTTP endpoint http://%s:%d%s (%s)", host, port, path, "bearer token required" if token else "no token")
    uvicorn.run(app, host=host, port=port, log_level=log_level.lower())


if __name__ == "__main__":
    raise SystemExit(main())
