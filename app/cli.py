"""`exemplar-api`, the command: `--check` answers with the standard library alone (a container
healthcheck runs it every few seconds: importing the server would load torch, over 2 s and
250 MB each time); anything else starts the server (`app.main.main`)."""

from __future__ import annotations

import os
import sys

from app.probe import probe_ready


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if "--check" in args:
        port = os.environ.get("EXEMPLAR_PORT", "8000")
        if "--port" in args[:-1]:
            port = args[args.index("--port") + 1]
        if not port.isdigit():
            sys.exit(f"exemplar-api: error: --port must be a number; got {port!r}")
        sys.exit(probe_ready(int(port)))
    from app.main import main as serve

    serve(argv)
