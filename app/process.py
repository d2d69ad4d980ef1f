"""Run `exemplar-api` as a child process on a free loopback port (end-to-end tests, load tests)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_api(index: Path, log: Path, timeout_s: float = 180.0, **env: str) -> Iterator[str]:
    """Start the server on `index` (output to `log`, extra `EXEMPLAR_*` settings in `env`), yield its URL
    once `/readyz` answers 200, and terminate it afterwards. RuntimeError if it never gets ready."""
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [BIN / "exemplar-api", "--index", str(index), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**ENV, **env},
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"exemplar-api exited with {proc.returncode}: {log.read_text()[-2000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"exemplar-api not ready within {timeout_s:.0f} s; see {log}")
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=30)
