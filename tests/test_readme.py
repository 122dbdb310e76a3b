"""The README is the product's front page: what it names must exist and work as written."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from service.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_quickstart_is_two_make_targets_ci_runs_the_test_one() -> None:
    block = _section("Quickstart").split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["make run", "make test"]
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^run: ", makefile, re.M) and re.search(r"^test: ", makefile, re.M)
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert ci.rstrip().splitlines()[-1].strip() == "make test"


def test_every_path_named_exists() -> None:
    paths = set(re.findall(r"\b((?:deploy|docs|bench|service|trainer|tests)/[\w./-]*\w)", README))
    assert paths
    missing = sorted(p for p in paths if not (REPO / p.split("#", 1)[0]).exists())
    assert not missing, missing


def test_every_command_in_the_table_exists() -> None:
    parser = build_parser()
    names: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            names |= set(action.choices)
    table = _section("Commands")
    used = set(re.findall(r"`gatequeue (\w+)", table))
    used |= set(re.findall(r"`(show|logs|cancel) JOB", table))
    assert used, table
    assert used <= names, used - names


def test_configuration_table_matches_the_code() -> None:
    table = _section("Configuration")
    documented = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", table, re.M))
    # Variables gatequeue reads (`.get("X")`, `["X"]`), not those it sets for the trainer.
    pattern = re.compile(r"""(?:get\(|\[)\s*["']((?:GATEQUEUE|MONGODB)_[A-Z0-9_]+)["']\s*[,)\]]""")
    read: set[str] = set()
    for path in (REPO / "service").rglob("*.py"):
        read |= set(pattern.findall(path.read_text(encoding="utf-8")))
    assert documented == read


def test_deployment_sections_point_at_real_overlays() -> None:
    for title in ("Deploying with docker compose", "Deploying on Kubernetes"):
        assert f"## {title}\n" in README
    overlays = set(re.findall(r"overlays/([\w-]+)", _section("Deploying on Kubernetes")))
    assert {"minikube", "minikube-cpu", "gpu-cluster", "gpu-cluster-keda"} <= overlays
    for name in overlays:
        assert (REPO / "deploy" / "k8s" / "overlays" / name / "kustomization.yaml").is_file()
