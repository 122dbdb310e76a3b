"""bench/gpu_check.sh without a GPU: it parses, it fetches a wheel for every package the
trainer imports that the GPU image lacks, and its stage records merge into one JSON file.
(`bash bench/gpu_check.sh dry-run` runs every stage on the CPU; too slow for CI.)"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.sh"
# The GPU image's packages the trainer needs (the device README's KINDS.md lists the image).
IN_THE_IMAGE = {"torch", "numpy", "scikit-learn"}
PIP_NAMES = {"sklearn": "scikit-learn", "pydantic_core": "pydantic-core"}


def test_the_script_parses() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_wheels_cover_what_the_trainer_imports() -> None:
    wheels = set(re.search(r"^WHEELS=\(([^)]*)\)", SCRIPT.read_text(), re.M).group(1).split())  # type: ignore[union-attr]
    stdlib = set(sys.stdlib_module_names)
    imported: set[str] = set()
    for path in (REPO / "trainer").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
            elif (  # trainer.lazy's LazyModule("entmax"): imported on first use
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "LazyModule"
                and isinstance(node.args[0], ast.Constant)
            ):
                imported.add(str(node.args[0].value).split(".")[0])
    third_party = {PIP_NAMES.get(m, m) for m in imported - stdlib - {"trainer", "service"}}
    assert "entmax" in third_party
    assert third_party - {"difflogic_cuda"} <= wheels | IN_THE_IMAGE, third_party
    # pydantic's own needs, which pip download --no-deps does not bring
    assert {"annotated-types", "typing-inspection", "typing-extensions"} <= wheels


def test_stage_records_merge(tmp_path: Path) -> None:
    (tmp_path / "env.meta.json").write_text(
        '{"status": "ok", "rc": 0, "seconds": 2, "limit_s": 30}'
    )
    (tmp_path / "env.json").write_text('{"gpu": "NVIDIA H100 80GB HBM3"}')
    (tmp_path / "env.out").write_text("x" * 5000 + "tail")
    (tmp_path / "build.meta.json").write_text(
        '{"status": "timeout", "rc": 124, "seconds": 240, "limit_s": 240}'
    )
    target = tmp_path / "gpu_check.json"
    stages = REPO / "bench" / "gpu_stages.py"
    subprocess.run(
        [sys.executable, str(stages), "merge", str(tmp_path), str(target)],
        check=True, cwd=REPO, capture_output=True,
    )  # fmt: skip
    merged = json.loads(target.read_text())
    assert merged["summary"] == {"env": "ok", "build": "timeout"}
    assert merged["stages"]["env"]["result"] == {"gpu": "NVIDIA H100 80GB HBM3"}
    assert merged["stages"]["env"]["output_tail"].endswith("tail")
    assert len(merged["stages"]["env"]["output_tail"]) == 3000
