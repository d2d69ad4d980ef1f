"""`make compose-test`: build the images from the real Dockerfile and run the real docker-compose.yml
as a user would, with podman and podman-compose, on a machine with no Docker engine and no image
registry.

1. Base images, built locally (no registry): a Debian bookworm rootfs from `debootstrap`
   (cached as a tarball under .cache/compose/), imported into podman, then Python 3.11 and
   Redis 7.0 from Debian's packages (deploy/base/*.Containerfile).
2. A wheelhouse of every pinned dependency (the host's pip downloads it; torch is the CPU
   build) served over loopback as a pip index, so the image build itself needs no network.
3. The README's "Deploy with docker compose" steps, with COMPOSE="podman-compose":
   build, prepare the demo into the volume with the builder, bring up redis + api + worker,
   wait for every healthcheck, explain with an API key, run a batch job on the worker, kill the
   worker and see it restarted, tear everything down.

Last line: `compose: build_s= up_s= explain=200 job=finished restarts=1`. Exit status 0 only if
every step passed. Why podman-compose (Debian's 1.0.3) and not podman's Docker API with a
compose client: podman runs healthchecks from systemd timers, and there is no systemd here, so
a compose client waiting on `condition: service_healthy` through the API would wait forever;
this script runs each service's own healthcheck command (`podman healthcheck run`) instead.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "compose"
CONTAINERS_CONF = ROOT / "deploy" / "containers.conf"
PROJECT = "exemplar"
DEBIAN_IMAGE = "localhost/exemplar-debian:bookworm"
PYTHON_IMAGE = "localhost/exemplar-python:3.11-bookworm"
REDIS_IMAGE = "localhost/exemplar-redis:7.0-bookworm"
SERVICES = ("redis", "api", "worker")
IMAGES = ("exemplar:0.1.0", "exemplar-demo:0.1.0")  # docker-compose.yml's image names
# podman-compose passes no build network of its own; the build must reach the index on loopback
COMPOSE = ["podman-compose", "--podman-build-args=--network=host", "-p", PROJECT]
# --no-deps: podman-compose 1.0.3 would otherwise start every service (the builder too) first
BUILD, PREPARE, UP, DOWN = "build", "run --rm --no-deps builder", f"up -d {' '.join(SERVICES)}", "down -v"
README_STEPS = (BUILD, PREPARE, UP, DOWN)
"""The README's steps, each run as `$COMPOSE -p exemplar <step>` (tests/test_deploy_files.py checks)."""
DEMO = "tiny"
INDEX_PORT = 38471  # the wheelhouse's pip index on loopback (a free one if taken)


def log(message: str) -> None:
    print(f"compose-test: {message}", flush=True)


def run(cmd: list[str], *, env: dict[str, str] | None = None, capture: bool = False, check: bool = True) -> str:
    """Run a command, echoing it; its output goes to ours unless captured."""
    print("$ " + shlex.join(cmd), flush=True)
    done = subprocess.run(cmd, env=env, cwd=ROOT, text=True, capture_output=capture, check=False)
    if check and done.returncode != 0:
        detail = (done.stderr or done.stdout or "").strip()[-2000:] if capture else ""
        raise SystemExit(f"compose-test: failed ({done.returncode}): {shlex.join(cmd)}\n{detail}")
    return done.stdout if capture else ""


def preflight() -> None:
    missing = [tool for tool in ("podman", "podman-compose", "debootstrap") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(
            f"compose-test: {', '.join(missing)} not found; install them with "
            "`apt-get install podman runc podman-compose debootstrap` (Debian bookworm)"
        )


def image_exists(name: str) -> bool:
    return subprocess.run(["podman", "image", "exists", name], check=False).returncode == 0


def base_images() -> None:
    """The Debian, Python and Redis images, built once and kept in podman's store (and the
    debootstrap rootfs as a tarball under .cache/compose/, so a fresh store skips debootstrap)."""
    if not image_exists(DEBIAN_IMAGE):
        tarball = CACHE / "debian-bookworm-minbase.tar"
        if not tarball.exists():
            CACHE.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
                rootfs = Path(tmp) / "rootfs"
                run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), "http://deb.debian.org/debian"])
                run(["tar", "-C", str(rootfs), "-cf", str(tarball) + ".part", "."])
                os.replace(str(tarball) + ".part", tarball)
        run(["podman", "import", str(tarball), DEBIAN_IMAGE])
    for image, containerfile in ((PYTHON_IMAGE, "python"), (REDIS_IMAGE, "redis")):
        if not image_exists(image):
            run(
                [
                    *("podman", "build", "--network", "host", "--build-arg", f"DEBIAN_IMAGE={DEBIAN_IMAGE}"),
                    *("-f", f"deploy/base/{containerfile}.Containerfile", "-t", image, "deploy/base"),
                ]
            )


def wheelhouse() -> Path:
    """Every pinned dependency as a wheel under .cache/compose/wheelhouse, and a PEP 503 index over it.

    torch comes from the host's pip (its configuration has the CPU build); everything else is
    resolved by pip inside the Python base image, so environment markers are those of the
    image's interpreter (Debian's 3.11.2 needs async-timeout where the host's 3.11.7 does not).
    The host's CA bundle goes in too, for networks that intercept TLS.
    """
    import tomllib

    house = CACHE / "wheelhouse"
    house.mkdir(parents=True, exist_ok=True)
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch = [d for d in deps if d.startswith("torch==")]
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "-d",
            str(house),
            *torch,
        ]
    )
    pip = "/tmp/venv/bin/pip download --quiet --disable-pip-version-check -d /wheelhouse --find-links /wheelhouse"
    script = (
        f"python3 -m venv /tmp/venv && {pip} --only-binary :all: {shlex.join([*deps, 'setuptools>=68', 'wheel'])}"
        f" && {pip} --no-deps -r /src/requirements-data.txt"
    )
    mounts = ["-v", f"{house}:/wheelhouse", "-v", f"{ROOT / 'requirements-data.txt'}:/src/requirements-data.txt:ro"]
    ca_bundle = Path(os.environ.get("EXEMPLAR_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt"))
    if ca_bundle.is_file():
        mounts += ["-v", f"{ca_bundle}:/etc/ssl/host-ca.crt:ro", "-e", "PIP_CERT=/etc/ssl/host-ca.crt"]
    run(["podman", "run", "--rm", "--network", "host", *mounts, PYTHON_IMAGE, "sh", "-c", script])
    simple = CACHE / "simple"
    shutil.rmtree(simple, ignore_errors=True)
    by_project: dict[str, list[str]] = {}
    for wheel in sorted(house.glob("*.whl")):
        name = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
        by_project.setdefault(name, []).append(wheel.name)
    for name, files in by_project.items():
        (simple / name).mkdir(parents=True)
        links = "".join(f'<a href="../../wheelhouse/{f.replace("+", "%2B")}">{f}</a><br>' for f in files)
        (simple / name / "index.html").write_text(f"<!DOCTYPE html><html><body>{links}</body></html>\n")
    return simple


@contextmanager
def serve_index() -> Iterator[str]:
    """.cache/compose over HTTP on a free loopback port; yields the pip index URL."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = partial(Quiet, directory=str(CACHE))
    try:  # the same URL every run, so the image layers built from it stay cached
        server = ThreadingHTTPServer(("127.0.0.1", INDEX_PORT), handler)
    except OSError:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple"
    finally:
        server.shutdown()


def containers() -> dict[str, str]:
    """Service -> name of its (first) container in this project."""
    out = run(
        ["podman", "ps", "-a", "--filter", f"label=io.podman.compose.project={PROJECT}", "--format", "json"],
        capture=True,
    )
    found: dict[str, str] = {}
    for c in json.loads(out or "[]"):
        service = (c.get("Labels") or {}).get("com.docker.compose.service")
        if service:
            found.setdefault(service, c["Names"][0])
    return found


def healthy(name: str) -> bool:
    """The container's own healthcheck command (from docker-compose.yml) passes now."""
    done = subprocess.run(["podman", "healthcheck", "run", name], capture_output=True, text=True, check=False)
    return done.returncode == 0


def wait_healthy(services: tuple[str, ...], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pending = set(services)
    while pending:
        names = containers()
        pending = {s for s in pending if s not in names or not healthy(names[s])}
        if not pending:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"compose-test: not healthy after {timeout_s:.0f} s: {', '.join(sorted(pending))}")
        time.sleep(2)


def inspect(name: str, template: str) -> str:
    return run(["podman", "inspect", "--format", template, name], capture=True).strip()


def show_logs() -> None:
    for service, name in containers().items():
        print(f"--- {service} ({name}) ---", flush=True)
        subprocess.run(["podman", "logs", "--tail", "40", name], check=False)


def compose(step: str, env: dict[str, str], *, check: bool = True) -> None:
    run([*COMPOSE, *step.split()], env=env, capture=not check, check=check)


def scenario(env: dict[str, str], port: int, key: str) -> tuple[float, int, str, int]:
    """The README's steps after the build: (up_s, explain status, job status, worker restarts)."""
    import httpx

    started = time.monotonic()
    compose(PREPARE, env)
    log(f"builder prepared the {DEMO} demo in {time.monotonic() - started:.0f} s")
    started = time.monotonic()
    compose(UP, env)
    wait_healthy(SERVICES, timeout_s=300)
    up_s = time.monotonic() - started
    log(f"redis, api and worker healthy {up_s:.0f} s after `up`")

    base, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, headers=headers, timeout=120) as http:
        if http.get("/docs").status_code != 200 or http.get("/docs-assets/swagger-ui-bundle.js").status_code != 200:
            raise SystemExit("compose-test: /docs or its packaged assets did not load")
        if httpx.post(f"{base}/v1/explain", json={"text": "a"}, timeout=30).status_code != 401:
            raise SystemExit("compose-test: /v1/explain answered without an API key")
        explain = http.post("/v1/explain", json={"text": "the flight was delayed again", "k": 3})
        log(f"POST /v1/explain -> {explain.status_code}: {explain.text[:200]}")
        queries = [{"text": t} for t in ("great crew, thank you", "lost my bag", "is the lounge open?")]
        submitted = http.post("/v1/jobs", json={"queries": queries, "options": {"k": 3}})
        if submitted.status_code != 202:
            raise SystemExit(f"compose-test: POST /v1/jobs -> {submitted.status_code}: {submitted.text[:300]}")
        job_id, status, deadline = submitted.json()["id"], "queued", time.monotonic() + 180
        while status not in ("finished", "failed", "canceled", "stopped") and time.monotonic() < deadline:
            time.sleep(1)
            status = http.get(f"/v1/jobs/{job_id}").json()["status"]
        log(f"batch job {job_id} -> {status}")

    # The worker process dies as in a crash or an OOM kill: SIGKILL from outside, which the engine
    # did not ask for. (`podman kill`, like `docker kill`, counts as a stop by the user, after which
    # no restart policy restarts the container.)
    worker = containers()["worker"]
    before = int(inspect(worker, "{{.RestartCount}}") or 0)
    pid = int(inspect(worker, "{{.State.Pid}}"))
    log(f"kill -9 {pid} (the worker container's main process)")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while int(inspect(worker, "{{.RestartCount}}") or 0) <= before and time.monotonic() < deadline:
        time.sleep(1)
    restarts = int(inspect(worker, "{{.RestartCount}}") or 0) - before
    if restarts:
        wait_healthy(("worker",), timeout_s=180)
        log(f"worker killed, restarted by its restart policy ({restarts}x) and healthy again")
    return up_s, explain.status_code, status, restarts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="leave the stack running (tear down yourself)")
    args = parser.parse_args()
    preflight()
    os.environ["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    started = time.monotonic()
    base_images()
    simple = wheelhouse()
    log(f"index over {len(list(simple.iterdir()))} projects in {simple}")
    key = secrets.token_urlsafe(24)
    from app.process import free_port

    port = free_port()
    with serve_index() as index_url:
        env = {
            **os.environ,
            "EXEMPLAR_DEMO": DEMO,
            "EXEMPLAR_API_PORTS": str(port),
            "EXEMPLAR_API_KEYS": json.dumps({"ci": hashlib.sha256(key.encode()).hexdigest()}),
            "EXEMPLAR_ADMIN_KEY_SHA256": hashlib.sha256(secrets.token_bytes(16)).hexdigest(),
            "EXEMPLAR_BASE_IMAGE": PYTHON_IMAGE,
            "EXEMPLAR_REDIS_IMAGE": REDIS_IMAGE,
            "EXEMPLAR_TORCH_INDEX_URL": index_url,
            "EXEMPLAR_PIP_INDEX_URL": index_url,
        }
        compose(DOWN, env, check=False)  # leftovers of an interrupted run
        compose(BUILD, env)
    missing = [image for image in IMAGES if not image_exists(image)]
    if missing:  # podman-compose 1.0.3 exits 0 when a build fails
        raise SystemExit(f"compose-test: the build did not produce {', '.join(missing)} (see its output above)")
    build_s = time.monotonic() - started
    log(f"images built in {build_s:.0f} s")
    try:
        up_s, explain, job, restarts = scenario(env, port, key)
    except BaseException:
        show_logs()
        raise
    finally:
        if not args.keep:
            compose(DOWN, env, check=False)
    print(f"compose: build_s={build_s:.0f} up_s={up_s:.0f} explain={explain} job={job} restarts={restarts}")
    return 0 if (explain, job, restarts) == (200, "finished", 1) else 1


if __name__ == "__main__":
    sys.exit(main())
