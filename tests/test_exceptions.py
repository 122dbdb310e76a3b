"""Exceptions have one name each: an `except ConfigError` must not be able to mean two things
(issue 20 found two `ConfigError`s, one for the service's environment and one for the
trainer's arguments). Read from the source, so nothing heavy is imported."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("service", "trainer")
# Exception classes of the standard library and the dependencies that ours derive from.
FOREIGN = {"Exception", "BaseException", "ValueError", "RuntimeError", "OSError", "KeyError",
           "TypeError", "LookupError", "PyMongoError", "ArgumentTypeError"}  # fmt: skip


def _base_name(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def exception_classes() -> dict[str, list[str]]:
    """{class name: the modules defining it} for every exception class of our packages."""
    bases: dict[tuple[str, str], set[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef):
                    bases[(node.name, module)] = {_base_name(b) for b in node.bases}
    exceptions = set(FOREIGN)
    grew = True
    while grew:  # an exception's subclasses are exceptions, across modules
        found = {name for (name, _), of in bases.items() if of & exceptions}
        grew = not found <= exceptions
        exceptions |= found
    out: dict[str, list[str]] = defaultdict(list)
    for name, module in bases:
        if name in exceptions:
            out[name].append(module)
    return out


def test_the_scan_finds_the_exceptions() -> None:
    found = exception_classes()
    assert found["ConfigError"] == ["service.errors"]
    assert found["RunConfigError"] == ["trainer.errors"]
    assert "GateQueueConnectionError" in found  # a subclass of one of ours


def test_no_two_exception_classes_share_a_name() -> None:
    shared = {name: modules for name, modules in exception_classes().items() if len(modules) > 1}
    assert not shared, shared


def test_each_package_keeps_its_exceptions_in_one_module() -> None:
    """Where a package has several exceptions, one module holds them (its `errors.py`): a
    reader finds what a package may raise in one place. Private control-flow exceptions
    (`_Name`) stay where they are used."""
    by_package: dict[str, set[str]] = defaultdict(set)
    for name, modules in exception_classes().items():
        if name.startswith("_"):
            continue
        for module in modules:
            by_package[module.rpartition(".")[0]].add(module)
    spread = {package: sorted(m) for package, m in by_package.items() if len(m) > 1}
    assert not spread, spread
