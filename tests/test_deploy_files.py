"""Dockerfile and docker-compose.yml name real things (`make compose-test` runs them for real)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

from app.settings import ApiSettings
from worker.main import WorkerSettings

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
SETTINGS = {f"EXEMPLAR_{name.upper()}" for model in (ApiSettings, WorkerSettings) for name in model.model_fields}


def test_compose_commands_and_env_exist() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        command = service.get("command")
        if name != "redis":
            assert command[0] in SCRIPTS, f"{name}: {command[0]} is not a console script"
            for var in service.get("environment", {}):
                assert var in SETTINGS, f"{name}: {var} is not a setting"
        for dep, cond in service.get("depends_on", {}).items():
            assert dep in compose["services"]
            assert cond["condition"] == "service_healthy"
            assert "healthcheck" in compose["services"][dep]
    (ports,) = compose["services"]["api"]["ports"]
    host, container = re.fullmatch(r"\$\{EXEMPLAR_API_PORTS:-(\d+)\}:(\d+)", ports).groups()  # scalable
    assert int(host) == int(container) == ApiSettings().port


def test_every_long_running_service_has_its_own_healthcheck_and_restart_policy() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    probes = {"redis": "redis-cli ping", "api": "exemplar-api --check", "worker": "exemplar-worker --check"}
    for name, probe in probes.items():
        service = compose["services"][name]
        assert service["restart"] == "unless-stopped"
        kind, command = service["healthcheck"]["test"]
        assert kind == "CMD-SHELL", name
        assert command.startswith(probe), name
    assert "healthcheck" not in compose["services"]["builder"]  # a one-off job: nothing to probe
    assert compose["services"]["builder"]["profiles"] == ["build"]


def test_keys_are_required_only_where_they_are_used() -> None:
    """`${VAR:?}` fails every compose command (the builder's too) when VAR is unset; the api refuses
    to start without keys instead (EXEMPLAR_REQUIRE_KEYS)."""
    text = (ROOT / "docker-compose.yml").read_text()
    assert ":?" not in text
    compose = yaml.safe_load(text)
    api = compose["services"]["api"]["environment"]
    assert api["EXEMPLAR_REQUIRE_KEYS"] == "true"
    for service in ("worker", "builder"):
        assert "EXEMPLAR_API_KEYS" not in (compose["services"][service].get("environment") or {})


def test_images_are_pinned_and_the_base_is_a_build_argument() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    redis = compose["services"]["redis"]["image"]
    assert re.fullmatch(r"\$\{EXEMPLAR_REDIS_IMAGE:-[\w./-]+:\d+\.\d+\.\d+-bookworm\}", redis), redis
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M)
    assert base is not None
    assert re.search(r":3\.11\.\d+-slim-bookworm$", base.group(1)), "pin the Python base image"
    assert re.findall(r"^FROM (\S+)", text, re.M).count("${BASE_IMAGE}") == 2
    assert re.search(r"^ARG TORCH_INDEX_URL=\S+$", text, re.M)
    for service in ("api", "worker", "builder"):
        args = compose["services"][service]["build"]["args"]
        assert {"BASE_IMAGE", "TORCH_INDEX_URL", "PIP_INDEX_URL"} <= set(args)


def test_dockerfile_matches_the_code() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER exemplar$", text, re.M), "the image must run as a non-root user"
    assert "chown exemplar:exemplar /data" in text, "a new volume on /data must be writable by the app user"
    assert "HEALTHCHECK" not in text.replace("No HEALTHCHECK", ""), "one image, three roles: probes per service"
    for var in re.findall(r"(EXEMPLAR_[A-Z_]+)=", text):
        assert var in SETTINGS
    for package in re.findall(r"^COPY (\w+) \./\w+$", text, re.M):
        assert (ROOT / package / "__init__.py").exists()
    for cmd in re.findall(r'^CMD \["([\w-]+)"', text, re.M):
        assert cmd in SCRIPTS
    # the dependencies (from pyproject.toml alone) are installed before any source is copied
    assert text.index("pip install -r /tmp/requirements.txt") < text.index("COPY exemplar")
    assert text.index("COPY pyproject.toml") < text.index("pip install -r /tmp/requirements.txt")


def test_the_build_context_is_only_what_the_dockerfile_copies() -> None:
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") :][:1] == ["*"], "exclude everything, then allow what is copied"
    copied = set(re.findall(r"^COPY (?!--from)(.+) \S+$", (ROOT / "Dockerfile").read_text(), re.M))
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for sources in copied:
        for source in sources.split():
            assert source in allowed, f"{source} is copied but excluded by .dockerignore"


def test_the_readme_runs_what_compose_test_runs() -> None:
    """The README's compose steps are the commands deploy/compose_test.py runs."""
    from deploy.compose_test import README_STEPS

    readme = (ROOT / "README.md").read_text()
    for step in README_STEPS:
        assert f"$COMPOSE -p exemplar {step}" in readme, step


def test_ci_installs_what_the_browser_tests_need() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r'-x "\$\{EXEMPLAR_CHROMIUM:-/usr/bin/chromium\}" \] \|\| need_apt\+=\(chromium\)', ci)
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    assert any(re.fullmatch(r"playwright==[\d.]+", pin) for pin in dev), "pin playwright in the dev extras"
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "static/*" in package_data["app"], "the web page must ship in the wheel (Dockerfile: pip install .)"
