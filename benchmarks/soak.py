"""Soak: the API's memory (RSS) under a steady mix of requests, and across index reloads.

Starts its own `exemplar-api` on a demo (no Redis, no keys), sends a warm-up round of a request
mix (light explains, large candidate pools, pairwise strategies over 2,000 candidates, a
compare, a `reconstruct` at k = 25), then keeps `--clients` clients sending that mix for
`--seconds`, sampling the server's RSS (`process_resident_memory_bytes` on `/metrics`). Then it
reloads the index (`POST /v1/admin/reload`) `--reloads` times, sending the mix after each.
Issue 24's targets: RSS growth after warm-up <= 5 %, and after a reload within 10 % of the RSS
before it.

    .venv/bin/python benchmarks/soak.py                 # tweets demo, 4 clients, 180 s, 3 reloads
    .venv/bin/python benchmarks/soak.py --quick         # tiny demo, 2 clients, 60 s, 2 reloads

The last line is `soak: rss_warm_mb=<a> rss_end_mb=<b> growth_pct=<b/a - 1> rss_before_reload_mb=<c>
rss_after_reload_mb=<d> reload_pct=<d/c - 1> requests=<n> failed=<f>`.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from app.process import running_api
from exemplar.research.demos import prepare

SERVER_ENV = {"EXEMPLAR_TRUNCATE_QUERIES": "true", "EXEMPLAR_WATCH_INTERVAL_S": "0"}


def mix(index: Path) -> list[tuple[str, dict[str, Any]]]:
    row = json.loads((index.parent / "test.jsonl").read_text().splitlines()[0])
    q = {"text": row["text"]} if "text" in row else {"prompt": row["prompt"], "response": row["response"]}
    return [
        ("/v1/explain", {**q, "k": 5}),  # the default request
        ("/v1/explain", {**q, "k": 10, "strategy": "balanced", "pool_size": 1000, "score_space": "projected"}),
        ("/v1/explain", {**q, "k": 20, "strategy": "divine", "pool_size": 2000, "score_space": "projected"}),
        ("/v1/explain", {**q, "k": 20, "strategy": "aide", "pool_size": 2000, "score_space": "projected"}),
        ("/v1/explain", {**q, "k": 25, "strategy": "reconstruct"}),
        ("/v1/compare", {**q, "k": 5}),
    ]


def rss_mb(http: httpx.Client, url: str) -> float:
    text = http.get(f"{url}/metrics", timeout=30).text
    match = re.search(r"^process_resident_memory_bytes ([0-9.e+]+)$", text, re.M)
    if match is None:
        raise SystemExit("no process_resident_memory_bytes on /metrics")
    return float(match.group(1)) / 2**20


COUNTING = threading.Lock()


def send_all(url: str, requests: list[tuple[str, dict[str, Any]]], seed: int, counts: dict[str, int]) -> None:
    with httpx.Client(timeout=600) as http:
        for path, body in requests:
            r = http.post(f"{url}{path}", json={**body, "seed": seed})
            with COUNTING:
                counts["requests"] += 1
                counts["failed"] += r.status_code != 200
            if r.status_code != 200:
                print(f"  {path} {r.status_code} {r.text[:200]}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="tweets")
    parser.add_argument("--root", type=Path, default=Path(".cache/demos"))
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--reloads", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny demo, 2 clients, 60 s, 2 reloads")
    args = parser.parse_args()
    if args.quick:
        args.demo, args.clients, args.seconds, args.reloads = "tiny", 2, 60.0, 2
    index = prepare(args.demo, args.root)
    requests = mix(index)
    counts = {"requests": 0, "failed": 0}
    log = Path(f"/tmp/exemplar-soak-{args.demo}.log")
    with running_api(index, log, 180.0, **SERVER_ENV) as url, httpx.Client() as http:
        ready = rss_mb(http, url)
        send_all(url, requests, 0, counts)  # warm-up: every kind of request once ...
        send_all(url, requests, 1, counts)  # ... and twice (allocator pools, caches at their size)
        warm = rss_mb(http, url)
        print(f"{args.demo} demo; RSS at ready {ready:.0f} MB, after warm-up {warm:.0f} MB", flush=True)
        stop = time.monotonic() + args.seconds

        def client(i: int) -> None:
            seed = 2 + i
            while time.monotonic() < stop:
                send_all(url, requests, seed, counts)
                seed += args.clients

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        samples = []
        while any(t.is_alive() for t in threads):
            time.sleep(min(15.0, max(1.0, args.seconds / 12)))
            samples.append(rss_mb(http, url))
            print(
                f"  t={args.seconds - (stop - time.monotonic()):5.0f} s  RSS {samples[-1]:.0f} MB  requests {counts['requests']}",
                flush=True,
            )
        for t in threads:
            t.join()
        end = rss_mb(http, url)
        before_reload = end
        after_reload = end
        for i in range(args.reloads):
            r = http.post(f"{url}/v1/admin/reload", timeout=300)
            if r.status_code != 200:
                raise SystemExit(f"reload failed: {r.status_code} {r.text[:300]}")
            send_all(url, requests, 1000 + i, counts)  # the new version's caches
            after_reload = rss_mb(http, url)
            print(f"  reload {i + 1}: RSS {after_reload:.0f} MB", flush=True)
    growth = end / warm - 1
    reload_change = after_reload / before_reload - 1
    print(
        f"RSS after warm-up {warm:.0f} MB, after {args.seconds:.0f} s of {args.clients} clients {end:.0f} MB ({growth:+.1%}; target <= +5%)"
    )
    print(
        f"RSS before {args.reloads} reloads {before_reload:.0f} MB, after {after_reload:.0f} MB ({reload_change:+.1%}; target within 10%)"
    )
    print(
        f"soak: rss_warm_mb={warm:.0f} rss_end_mb={end:.0f} growth_pct={growth * 100:.1f} "
        f"rss_before_reload_mb={before_reload:.0f} rss_after_reload_mb={after_reload:.0f} "
        f"reload_pct={reload_change * 100:.1f} requests={counts['requests']} failed={counts['failed']}"
    )


if __name__ == "__main__":
    main()
