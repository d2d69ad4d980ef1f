"""Builder CLI -> index -> `exemplar-api` process, over real HTTP on loopback."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.process import BIN, ENV, running_api
from tests.conftest import write_jsonl

pytestmark = pytest.mark.slow


def run_builder(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN / "index-builder", "build", *map(str, args)], capture_output=True, text=True, env=ENV, timeout=240
    )


@contextlib.contextmanager
def serve(index: Path, log: Path, **env: str) -> Iterator[str]:
    """A real `exemplar-api` process on a free loopback port; its log must hold no traceback."""
    try:
        with running_api(index, log, **env) as url:
            yield url
    except RuntimeError as exc:
        pytest.fail(str(exc))
    assert "Traceback" not in log.read_text()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, causal_adapter_dir: Path, causal_data: Path) -> Iterator[str]:
    out = tmp_path_factory.mktemp("e2e") / "index"
    built = run_builder(
        "--model", causal_adapter_dir, "--task", "causal-lm", "--data", causal_data, "--out", out, "--proj-dim", "16"
    )
    assert built.returncode == 0, built.stderr
    assert "24 examples" in built.stdout
    with serve(out, out.parent / "server.log") as url:
        yield url


def test_explain_over_http(server: str) -> None:
    r = httpx.post(
        f"{server}/v1/explain", json={"prompt": "is this message spam or ham", "response": "spam", "k": 4}, timeout=60
    )
    assert r.status_code == 200, r.text
    body = r.json()
    ids = [e["id"] for e in body["examples"]]
    assert len(ids) == 4 == len(set(ids))
    assert sum(e["weight"] for e in body["examples"]) == pytest.approx(1.0, abs=1e-5)
    assert all("prompt" in e and "response" in e for e in body["examples"])
    assert body["index"]["task"] == "causal-lm"
    looked_up = httpx.get(f"{server}/v1/examples/{ids[0]}", timeout=10).json()
    assert looked_up["prompt"] == body["examples"][0]["prompt"]


def test_bad_input_over_http_then_still_serving(server: str) -> None:
    r = httpx.post(f"{server}/v1/explain", json={"text": "classifier style"}, timeout=30)
    assert r.status_code == 422
    assert "causal LM" in r.json()["error"]
    r = httpx.post(
        f"{server}/v1/explain", content=b"x" * 200_000, headers={"content-type": "application/json"}, timeout=30
    )
    assert r.status_code == 413
    ok = httpx.post(f"{server}/v1/explain", json={"prompt": "the team", "response": "won", "k": 2}, timeout=60)
    assert ok.status_code == 200


def test_concurrent_requests_are_safe(server: str) -> None:
    import concurrent.futures

    def one(i: int) -> int:
        body = {"prompt": f"request {i} the cat", "response": "sat on the mat", "k": 3}
        return httpx.post(f"{server}/v1/explain", json=body, timeout=120).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, range(16))) == [200] * 16
    metrics = httpx.get(f"{server}/metrics", timeout=10).text
    singles = float(re.search(r'exemplar_model_batch_size_bucket\{le="1.0"\} (\S+)', metrics).group(1))
    batches = float(re.search(r"exemplar_model_batch_size_count (\S+)", metrics).group(1))
    assert singles < batches, "concurrent requests should have been micro-batched"


def test_builder_reports_bad_rows(tmp_path: Path, classifier_dir: Path) -> None:
    data = write_jsonl(
        tmp_path / "bad.jsonl",
        [{"text": "fine", "label": "neutral"}, {"text": "", "label": "neutral"}, {"text": "x", "label": "??"}],
    )
    failed = run_builder("--model", classifier_dir, "--task", "classification", "--data", data, "--out", tmp_path / "i")
    assert failed.returncode == 2
    assert "line 2" in failed.stderr
    assert "line 3" in failed.stderr
    assert not (tmp_path / "i").exists()
    skipped = run_builder(
        "--model",
        classifier_dir,
        "--task",
        "classification",
        "--data",
        data,
        "--out",
        tmp_path / "i",
        "--skip-bad-rows",
    )
    assert skipped.returncode == 0, skipped.stderr
    assert "1 examples (2 skipped)" in skipped.stdout
    again = run_builder("--model", classifier_dir, "--task", "classification", "--data", data, "--out", tmp_path / "i")
    assert again.returncode == 2
    assert "already exists" in again.stderr
    missing = run_builder(
        "--model", tmp_path / "nope", "--task", "classification", "--data", data, "--out", tmp_path / "j"
    )
    assert missing.returncode == 2
    assert "not a directory" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_api_refuses_a_missing_index(tmp_path: Path) -> None:
    r = subprocess.run(
        [BIN / "exemplar-api", "--index", str(tmp_path)], capture_output=True, text=True, env=ENV, timeout=120
    )
    assert r.returncode == 2
    assert "not an index" in r.stderr
    assert "Traceback" not in r.stderr


def test_killed_build_resumes_to_identical_vectors(tmp_path: Path, classifier_dir: Path) -> None:
    import numpy as np

    from tests.conftest import classification_rows

    data = write_jsonl(
        tmp_path / "big.jsonl", [{**r, "id": f"{r['id']}-{i}"} for i in range(40) for r in classification_rows()]
    )
    args = [
        "--model",
        classifier_dir,
        "--task",
        "classification",
        "--data",
        data,
        "--proj-dim",
        "16",
        "--shard-size",
        "32",
    ]
    reference = run_builder(*args, "--out", tmp_path / "ref")
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "idx"
    shards = tmp_path / ".idx.shards"
    proc = subprocess.Popen(
        [BIN / "index-builder", "build", *map(str, args), "--out", str(out)], env=ENV, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(shards.glob("*.sha256"))) < 3:
        time.sleep(0.02)
    proc.kill()  # SIGKILL in the middle of the build
    proc.wait()
    finished = len(list(shards.glob("*.sha256")))
    assert 3 <= finished < 45, "the build was not interrupted in the middle"
    assert not out.exists()  # nothing half-built is published
    resumed = run_builder(*args, "--out", out)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed {finished} finished shard(s)" in resumed.stdout
    np.testing.assert_array_equal(np.load(out / "vectors.npy"), np.load(tmp_path / "ref" / "vectors.npy"))
    assert not shards.exists()  # cleaned up once published


def test_append_matches_a_full_build_and_refuses_clashes(tmp_path: Path, classifier_dir: Path) -> None:
    import numpy as np

    from tests.conftest import classification_rows

    rows = classification_rows()
    first, second = write_jsonl(tmp_path / "a.jsonl", rows[:20]), write_jsonl(tmp_path / "b.jsonl", rows[20:])
    both = write_jsonl(tmp_path / "all.jsonl", rows)
    common = ["--model", classifier_dir, "--task", "classification", "--proj-dim", "16"]
    assert run_builder(*common, "--data", both, "--out", tmp_path / "full").returncode == 0
    assert run_builder(*common, "--data", first, "--out", tmp_path / "grown").returncode == 0
    cli = [BIN / "index-builder", "append", "--index", str(tmp_path / "grown")]
    added = subprocess.run([*cli, "--data", str(second)], capture_output=True, text=True, env=ENV, timeout=240)
    assert added.returncode == 0, added.stderr
    assert f"now {len(rows)} examples" in added.stdout
    full, grown = tmp_path / "full", tmp_path / "grown"
    np.testing.assert_allclose(np.load(grown / "vectors.npy"), np.load(full / "vectors.npy"), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.load(grown / "datainf.npy"), np.load(full / "datainf.npy"), rtol=1e-4)
    manifest = json.loads((grown / "manifest.json").read_text())
    assert manifest["dataset_checksum"] == json.loads((full / "manifest.json").read_text())["dataset_checksum"]
    again = subprocess.run([*cli, "--data", str(second)], capture_output=True, text=True, env=ENV, timeout=240)
    assert again.returncode == 2
    assert "already in the index" in again.stderr


def test_over_long_rows_are_bad_rows_unless_truncated(tmp_path: Path, classifier_dir: Path) -> None:
    long_text = " ".join(["the cat sat on the mat"] * 40)
    data = write_jsonl(
        tmp_path / "long.jsonl", [{"text": "fine", "label": "neutral"}, {"text": long_text, "label": "neutral"}]
    )
    common = ["--model", classifier_dir, "--task", "classification", "--data", data, "--max-length", "32"]
    failed = run_builder(*common, "--out", tmp_path / "a")
    assert failed.returncode == 2
    assert "line 2: input is longer than --max-length 32 tokens" in failed.stderr
    truncated = run_builder(*common, "--out", tmp_path / "b", "--truncate")
    assert truncated.returncode == 0, truncated.stderr
    assert "2 examples (0 skipped)" in truncated.stdout
