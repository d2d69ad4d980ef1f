"""Dockerfile and docker-compose.yml cannot run here (no Docker engine): check they name real things."""

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
            assert "healthcheck" in compose["services"][dep] or dep == "api"
    (ports,) = compose["services"]["api"]["ports"]
    host, container = re.fullmatch(r"\$\{EXEMPLAR_API_PORTS:-(\d+)\}:(\d+)", ports).groups()  # scalable
    assert int(host) == int(container) == ApiSettings().port


def test_dockerfile_matches_the_code() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER exemplar$", text, re.M), "the image must run as a non-root user"
    assert "HEALTHCHECK" in text
    assert "/readyz" in text
    for var in re.findall(r"(EXEMPLAR_[A-Z_]+)=", text):
        assert var in SETTINGS
    for package in re.findall(r"^COPY (\w+) \./\w+$", text, re.M):
        assert (ROOT / package / "__init__.py").exists()
    cmd = re.search(r'^CMD \["([\w-]+)"', text, re.M)
    assert cmd
    assert cmd.group(1) in SCRIPTS


def test_ci_installs_what_the_browser_tests_need() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r'-x "\$\{EXEMPLAR_CHROMIUM:-/usr/bin/chromium\}" \] \|\| need_apt\+=\(chromium\)', ci)
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    assert any(re.fullmatch(r"playwright==[\d.]+", pin) for pin in dev), "pin playwright in the dev extras"
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "static/*" in package_data["app"], "the web page must ship in the wheel (Dockerfile: pip install .)"
