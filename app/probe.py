"""Is the server on this host ready? Standard library only: `exemplar-api --check` runs it as a
container healthcheck, every few seconds."""

from __future__ import annotations

import urllib.error
import urllib.request


def probe_ready(port: int, timeout_s: float = 4.0) -> int:
    """0 if the server on this host's port answers /readyz with 200 (ready), 1 if not (loading, down).
    No proxy: the probe is for this host, whatever `http_proxy` says."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}/readyz", timeout=timeout_s) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError):
        return 1
