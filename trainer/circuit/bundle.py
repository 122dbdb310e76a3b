"""A compiled circuit directory: what `compile` writes and `predict`/`bench`/`verify` read.

    network.json    the network it was compiled from (a copy, so the directory stands alone)
    network.c       the C source (trainer.circuit.c_backend), network.h its API
    network.v       the Verilog module (trainer.circuit.verilog)
    network.<hash>.so   the shared library built from network.c on this machine
    circuit.json    manifest: sizes, gate histograms, the build; written last

Opening a directory rebuilds the library when it is missing or was built for another
compiler or CPU (the hash covers them), so a directory copied elsewhere still works. A bare
network.json is compiled into a cache directory keyed by its content.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer import environment
from trainer.circuit import c_backend, graph, ops, verilog
from trainer.circuit.build import BuildResult, Library, build_library
from trainer.export import FILENAME, DiscreteNetwork, load_network

MANIFEST = "circuit.json"
MANIFEST_FORMAT = "gatequeue.circuit"
SOURCE, HEADER, MODULE = "network.c", "network.h", "network.v"
DEFAULT_WORDS = 4  # 256 samples per gate operation: measured fastest with AVX2 (docs)


def cache_root() -> Path:
    """Where bare network.json files are compiled: $GATEQUEUE_CIRCUIT_CACHE or the user's."""
    return environment.circuit_cache()


def named_histogram(counts: list[int]) -> dict[str, int]:
    """{gate name: count} for all 16 ids, in id order (JSON-safe)."""
    return {name: int(n) for name, n in zip(ops.GATE_NAMES, counts, strict=True)}


@dataclass(frozen=True)
class CompiledCircuit:
    directory: Path
    network: DiscreteNetwork
    trained: graph.Circuit
    live: graph.Circuit
    manifest: dict[str, Any]
    library: Library

    @property
    def module_path(self) -> Path:
        return self.directory / MODULE


def _write(path: Path, data: bytes) -> None:
    """Atomically: a concurrent reader sees the old file or the new one, never half."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _network_file(path: Path) -> Path:
    return path / FILENAME if path.is_dir() else path


def compile_network(
    network_path: str | Path,
    out_dir: str | Path,
    *,
    words: int = DEFAULT_WORDS,
    optimize: bool = True,
) -> CompiledCircuit:
    """Load, optimize, write network.c/.h/.v, build the library, write the manifest.

    Raises OSError or ValueError for a missing or invalid network, CircuitError when no C
    compiler is found or the build fails.
    """
    source_file = _network_file(Path(network_path))
    raw = source_file.read_bytes()
    network = load_network(source_file)
    trained = graph.from_network(network)
    live = graph.optimize(trained) if optimize else trained
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if source_file.resolve() != (out / FILENAME).resolve():
        _write(out / FILENAME, raw)
    _write(out / SOURCE, c_backend.source(live, words).encode())
    _write(out / HEADER, c_backend.header(live, words).encode())
    _write(out / MODULE, verilog.module(live).encode())
    built = build_library(out / SOURCE, out)
    manifest = _manifest(network, trained, live, words, built, out, raw)
    manifest["optimized"] = optimize
    _write(out / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    return CompiledCircuit(out, network, trained, live, manifest, Library(built.library))


def _manifest(
    network: DiscreteNetwork,
    trained: graph.Circuit,
    live: graph.Circuit,
    words: int,
    built: BuildResult,
    out: Path,
    raw: bytes,
) -> dict[str, Any]:
    files = {
        name: (out / name).stat().st_size for name in (SOURCE, HEADER, MODULE, built.library.name)
    }
    return {
        "format": MANIFEST_FORMAT,
        "version": 1,
        "network_sha256": hashlib.sha256(raw).hexdigest(),
        "dataset": network.meta.get("dataset", {}).get("name"),
        "in_dim": trained.in_dim,
        "classes": trained.grouping,
        "outputs": len(trained.outputs),
        "gates": trained.gates,
        "gates_live": live.gates,
        "depth": graph.depth(live),
        "depth_trained": graph.depth(trained),
        "histogram": named_histogram(graph.histogram(trained)),
        "histogram_live": named_histogram(graph.histogram(live)),
        "words": words,
        "library": built.library.name,
        "compiler": built.compiler,
        "flags": list(built.flags),
        "compile_s": round(built.seconds, 3),
        "files": files,
    }


def open_circuit(path: str | Path, *, words: int = DEFAULT_WORDS) -> CompiledCircuit:
    """A compiled directory as it is, or a network.json (or run dir) compiled into the cache.

    Raises FileNotFoundError when there is nothing at `path`, ValueError when it is neither.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory")
    if p.is_dir() and (p / MANIFEST).exists():
        return _open_dir(p)
    network_file = _network_file(p)
    if not network_file.exists():
        raise FileNotFoundError(f"{p}: neither a compiled circuit ({MANIFEST}) nor {FILENAME}")
    raw = network_file.read_bytes()
    key = hashlib.sha256(raw + f"\0words={words}".encode()).hexdigest()[:16]
    target = cache_root() / key
    if (target / MANIFEST).exists():
        try:
            return _open_dir(target)
        except (OSError, ValueError):
            pass  # a damaged cache entry: compile it again
    return compile_network(network_file, target, words=words)


def _open_dir(directory: Path) -> CompiledCircuit:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{directory / MANIFEST}: not JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{directory / MANIFEST} is not a {MANIFEST_FORMAT} manifest")
    network = load_network(directory / FILENAME)
    trained = graph.from_network(network)
    live = graph.optimize(trained) if manifest.get("optimized", True) else trained
    built = build_library(directory / SOURCE, directory)  # the existing one when up to date
    if built.library.name != manifest.get("library"):
        manifest = {**manifest, "library": built.library.name, "compile_s": built.seconds}
        _write(directory / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    return CompiledCircuit(directory, network, trained, live, manifest, Library(built.library))
