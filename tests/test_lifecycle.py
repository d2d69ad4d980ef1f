"""Index lifecycle over real HTTP: versions side by side, swapped by file watch and by the
admin reload while requests keep coming, with zero failed requests."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from app.process import BIN, ENV
from exemplar.build import append_index
from exemplar.store import publish_version
from exemplar.tasks import Example
from tests.test_e2e import serve

pytestmark = pytest.mark.slow

LOAD_THREADS = 4


def new_version(root: Path, source: str, name: str, n_new: int) -> None:
    """root/name = root/source plus `n_new` appended examples, written beside the others (not yet served)."""
    shutil.copytree(root / source, root / name)
    append_index(
        root / name, [Example(id=f"{name}-{i}", text=f"{name} example {i}", label="neutral") for i in range(n_new)]
    )


def wait_for_version(url: str, name: str, timeout_s: float = 60.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        served = httpx.get(f"{url}/v1/index", timeout=10).json()
        if served["version"] == name:
            return dict(served)
        time.sleep(0.2)
    raise AssertionError(f"version {name} was not served within {timeout_s} s")


def test_versions_swap_under_load_without_a_failed_request(tmp_path: Path, classifier_index: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    shutil.copytree(classifier_index, root / "v1")
    publish_version(root, "v1")
    new_version(root, "v1", "v2", 1)
    new_version(root, "v2", "v3", 2)
    statuses: Counter[int] = Counter()
    sizes: set[int] = set()
    stop = threading.Event()

    def load(url: str, i: int) -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                try:
                    r = client.post(f"{url}/v1/explain", json={"text": f"the cat sat {i}", "k": 3})
                except httpx.TransportError:
                    statuses[-1] += 1
                    continue
                statuses[r.status_code] += 1
                if r.status_code == 200:
                    sizes.add(int(r.json()["index"]["n_examples"]))

    key = "admin-s3cret"
    env = {"EXEMPLAR_WATCH_INTERVAL_S": "0.3", "EXEMPLAR_ADMIN_KEY_SHA256": hashlib.sha256(key.encode()).hexdigest()}
    with serve(root, tmp_path / "api.log", **env) as url:
        first = wait_for_version(url, "v1")
        threads = [threading.Thread(target=load, args=(url, i)) for i in range(LOAD_THREADS)]
        for t in threads:
            t.start()
        try:
            time.sleep(1.0)
            publish_version(root, "v2")  # the file watch swaps it in
            assert wait_for_version(url, "v2")["n_examples"] == int(first["n_examples"]) + 1
            time.sleep(1.0)
            rolled = subprocess.run(  # roll back with the CLI, swapped by the admin reload
                [BIN / "index-builder", "publish", str(root), "v1"], capture_output=True, text=True, env=ENV, timeout=60
            )
            assert rolled.returncode == 0, rolled.stderr
            r = httpx.post(f"{url}/v1/admin/reload", headers={"X-Admin-Key": key}, timeout=60)
            assert r.status_code == 200, r.text
            assert r.json()["index"]["version"] == "v1"
            publish_version(root, "v3")
            assert wait_for_version(url, "v3")["n_examples"] == int(first["n_examples"]) + 3
            time.sleep(1.0)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=120)
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert set(statuses) == {200}, statuses
    assert statuses[200] >= 20
    n = int(first["n_examples"])
    assert {n, n + 1, n + 3} <= sizes  # requests were answered by every version while the load ran
    watched = re.search(r'exemplar_index_reloads_total\{trigger="file watch"\} (\d+)', metrics)
    assert watched is not None
    assert int(watched.group(1)) >= 2
    assert 'exemplar_index_reloads_total{trigger="admin reload"} 1.0' in metrics


def test_cli_builds_approximate_sharded_versions_and_lists_and_publishes_them(
    tmp_path: Path, classifier_dir: Path, classification_data: Path
) -> None:
    from exemplar.explain import Explainer
    from tests.test_e2e import run_builder

    root = tmp_path / "root"
    common = ("--model", classifier_dir, "--task", "classification", "--data", classification_data, "--out", root)
    built = run_builder(*common, "--version", "v1", "--index-type", "IVF2,Flat", "--search-shards", "2")
    assert built.returncode == 0, built.stderr
    assert (root / "v1" / "index-0001-00.faiss").exists()  # shard 1, norm bucket 0 (few rows: one bucket)
    assert (root / "CURRENT").read_text().strip() == "v1"
    again = run_builder(*common, "--version", "v2", "--no-publish")
    assert again.returncode == 0, again.stderr
    bad = run_builder(*common, "--version", "v3", "--index-type", "IVF99999,Flat")
    assert bad.returncode == 2
    assert "nlist" in bad.stderr
    assert not (root / "v3").exists()
    listed = subprocess.run([BIN / "index-builder", "versions", str(root)], capture_output=True, text=True, env=ENV)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].startswith("* v1")
    assert "IVF2,Flat  x2" in lines[0]
    assert lines[1].startswith("  v2")
    assert "Flat  x1" in lines[1]
    explainer = Explainer.from_index(root)
    assert explainer.store.path.name == "v1"
    fast = explainer.explain(Example(text="the cat sat"), k=3, preset="fast")
    assert fast.options.preset == "fast"
    assert len(fast.examples) == 3
    missing = subprocess.run(
        [BIN / "index-builder", "publish", str(root), "v9"], capture_output=True, text=True, env=ENV
    )
    assert missing.returncode == 2
    assert "no manifest.json" in missing.stderr
