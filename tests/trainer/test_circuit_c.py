"""The C library against trainer.export's numpy evaluator, on random networks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainer.circuit import CircuitError, compile_network, find_compiler, graph
from trainer.circuit.build import COMPILERS
from trainer.circuit.synthetic import random_network
from trainer.export import load_network, save_network

SHAPES = [  # in_dim, widths, grouping, samples (none a multiple of 64)
    (5, [8], 2, 1),
    (17, [30, 20], 10, 63),
    (64, [128, 128, 60], 3, 65),
    (100, [200, 200, 200, 200], 10, 1001),
    (320, [500, 500], 10, 333),
    (13, [7], 7, 129),
]


def make(tmp_path: Path, in_dim: int, widths: list[int], grouping: int, seed: int = 0) -> Path:
    return save_network(random_network(in_dim, widths, grouping, seed=seed), tmp_path / "net")


def bits(n: int, in_dim: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, (n, in_dim), dtype=np.uint8)


@pytest.mark.parametrize(("in_dim", "widths", "grouping", "n"), SHAPES)
def test_predictions_and_scores_equal_the_numpy_evaluator(
    tmp_path: Path, in_dim: int, widths: list[int], grouping: int, n: int
) -> None:
    path = make(tmp_path, in_dim, widths, grouping, seed=in_dim)
    net = load_network(path)
    compiled = compile_network(path, tmp_path / "circuit")
    x = bits(n, in_dim)
    assert np.array_equal(compiled.library.predict(x), net.predict(x))
    assert np.array_equal(compiled.library.scores(x), net.scores(x))


def test_unoptimized_and_other_word_counts_agree(tmp_path: Path) -> None:
    path = make(tmp_path, 40, [90, 90, 90], 3, seed=7)
    net = load_network(path)
    x = bits(777, 40)
    expected = net.scores(x)
    for words, optimize in ((1, False), (2, True), (8, True), (4, False)):
        compiled = compile_network(
            path, tmp_path / f"c{words}{optimize}", words=words, optimize=optimize
        )
        assert compiled.library.words == words
        assert compiled.manifest["gates_live"] == (compiled.live.gates)
        if not optimize:
            assert compiled.live.gates == compiled.trained.gates
        assert np.array_equal(compiled.library.scores(x), expected), (words, optimize)


def test_ties_go_to_the_first_class_with_the_highest_score(tmp_path: Path) -> None:
    # Two outputs per class over ten classes: most samples have tied top scores.
    path = make(tmp_path, 12, [40, 20], 10, seed=3)
    net = load_network(path)
    x = bits(500, 12)
    scores = net.scores(x)
    ties = ((scores == scores.max(1, keepdims=True)).sum(1) > 1).sum()
    assert ties > 100
    lib = compile_network(path, tmp_path / "c").library
    assert np.array_equal(lib.predict(x), scores.argmax(1))


def test_threads_give_identical_results(tmp_path: Path) -> None:
    path = make(tmp_path, 64, [300, 300, 300], 10, seed=11)
    lib = compile_network(path, tmp_path / "c").library
    x = bits(64 * 4 * 9 + 37, 64)  # more blocks than threads, and a ragged tail
    one = lib.predict(x, threads=1)
    assert np.array_equal(one, load_network(path).predict(x))
    for threads in (2, 3, 4, 64):
        assert np.array_equal(lib.predict(x, threads=threads), one)
    assert np.array_equal(lib.scores(x, threads=4), lib.scores(x, threads=1))


def test_input_types_and_empty_input(tmp_path: Path) -> None:
    path = make(tmp_path, 20, [40, 40], 4, seed=2)
    net = load_network(path)
    lib = compile_network(path, tmp_path / "c").library
    x = bits(130, 20)
    expected = net.predict(x)
    assert np.array_equal(lib.predict(x.astype(bool)), expected)
    assert np.array_equal(lib.predict(x.astype(np.int64)), expected)
    assert np.array_equal(lib.predict(np.asfortranarray(x)), expected)
    assert np.array_equal(lib.predict(x * 7), net.predict(x * 7))  # not 0 is true, as numpy
    assert lib.predict(x[:0]).shape == (0,)
    with pytest.raises(ValueError, match=r"\(n, 20\)"):
        lib.predict(x[:, :5])


def test_the_header_declares_what_the_source_defines(tmp_path: Path) -> None:
    path = make(tmp_path, 10, [20, 20], 2, seed=4)
    out = tmp_path / "c"
    compile_network(path, out)
    main = tmp_path / "main.c"
    main.write_text(
        '#include <stdio.h>\n#include "network.h"\n'
        "int main(void) {\n"
        "  uint8_t x[3 * GQ_IN_DIM] = {0}; int32_t pred[3]; int64_t info[8];\n"
        "  for (int i = 0; i < GQ_IN_DIM; i++) x[GQ_IN_DIM + i] = 1;\n"
        "  for (int i = 0; i < GQ_IN_DIM; i += 2) x[2 * GQ_IN_DIM + i] = 1;\n"
        "  gq_info(info);\n"
        "  if (gq_predict(x, 3, pred, 1)) return 1;\n"
        '  printf("%lld %d %d %d\\n", (long long)info[0], pred[0], pred[1], pred[2]);\n'
        "  return 0;\n}\n"
    )
    exe = tmp_path / "main"
    subprocess.run(
        [
            find_compiler(),
            "-O1",
            "-std=gnu11",
            "-pthread",
            f"-I{out}",
            str(main),
            str(out / "network.c"),
            "-o",
            str(exe),
        ],
        check=True,
        capture_output=True,
    )
    printed = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    x = np.zeros((3, 10), np.uint8)
    x[1] = 1
    x[2, ::2] = 1
    expected = load_network(path).predict(x)
    assert printed.split() == ["10", *map(str, expected)]


def test_no_c_compiler_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", "no-such-cc-here")
    with pytest.raises(CircuitError, match="no-such-cc-here"):
        find_compiler()
    monkeypatch.delenv("CC")
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: nothing to find
    with pytest.raises(CircuitError) as err:
        compile_network(make(tmp_path, 4, [4], 2), tmp_path / "c")
    assert all(name in str(err.value) for name in COMPILERS)


def test_cli_without_a_compiler_exits_2_naming_them(tmp_path: Path) -> None:
    path = make(tmp_path, 4, [4], 2)
    env = {**os.environ, "PATH": str(tmp_path)}
    env.pop("CC", None)
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.circuit", "compile", str(path), "-o", str(tmp_path / "c")],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 2
    assert "no C compiler found" in proc.stderr and "gcc" in proc.stderr


def test_the_package_does_not_import_torch() -> None:
    code = (
        "import sys, trainer.circuit, trainer.circuit.cli\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2]
    )


def test_constant_outputs_start_the_counters(tmp_path: Path) -> None:
    """TRUE and FALSE outputs are not counted but start each class's counter: classes of
    only TRUE (up to 37 of them, past every Harley-Seal plane), only FALSE, and mixed."""
    rng = np.random.default_rng(5)
    group = 40
    ops = np.concatenate(
        [
            np.full(group, 15),  # class 0: all TRUE
            np.full(group, 0),  # class 1: all FALSE
            np.r_[np.full(37, 15), rng.integers(0, 16, 3)],  # class 2: 37 TRUE
            np.r_[np.full(21, 0), np.full(5, 15), rng.integers(0, 16, 14)],
            rng.integers(0, 16, group),
        ]
    )
    rng.shuffle(ops[3 * group :])
    doc = random_network(9, [30, 5 * group], 5, seed=8)
    doc["layers"][1]["op"] = ops.tolist()
    path = save_network(doc, tmp_path / "net")
    net = load_network(path)
    x = bits(300, 9)
    lib = compile_network(path, tmp_path / "c").library
    expected = net.scores(x)
    assert (expected[:, 0] == group).all() and (expected[:, 1] == 0).all()
    assert (expected[:, 2] >= 37).all()
    assert np.array_equal(lib.scores(x), expected)
    assert np.array_equal(lib.predict(x), net.predict(x))


def test_the_generic_c_without_avx2_agrees(tmp_path: Path) -> None:
    """network.c has AVX2 paths (packing) beside generic vector-extension C: built
    without AVX2, the generic one gives the same scores (any in_dim, ragged tails)."""
    import platform

    from trainer.circuit.build import Library

    for in_dim, words in ((100, 4), (784, 4), (37, 2)):
        path = make(tmp_path / str(in_dim), in_dim, [300, 300], 10, seed=in_dim)
        out = tmp_path / f"c{in_dim}"
        compiled = compile_network(path, out, words=words)
        flags = ["-mno-avx2"] if platform.machine() in ("x86_64", "AMD64") else []
        lib_path = out / "generic.so"
        subprocess.run(
            [find_compiler(), "-O2", *flags, "-std=gnu11", "-shared", "-fPIC", "-pthread",
             str(out / "network.c"), "-o", str(lib_path)],
            check=True, capture_output=True,
        )  # fmt: skip
        x = bits(64 * 4 * 3 + 11, in_dim, seed=in_dim)
        expected = load_network(path).scores(x)
        assert np.array_equal(Library(lib_path).scores(x), expected)
        assert np.array_equal(compiled.library.scores(x), expected)


def test_the_c_runtime_is_package_data(tmp_path: Path) -> None:
    """network.c ends with runtime.c, read with importlib.resources: an installed package
    (the worker image's `pip install`) has it only if pyproject ships it."""
    import fnmatch
    import tomllib

    from trainer.circuit import c_backend

    root = Path(__file__).resolve().parents[2]
    shipped = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["trainer"]
    assert any(fnmatch.fnmatch(f"circuit/{c_backend.RUNTIME}", p) for p in shipped)
    assert c_backend.runtime().startswith("/* Prefetching")
    source = c_backend.source(graph.from_network(load_network(make(tmp_path, 5, [8], 2))))
    assert source.endswith(c_backend.runtime().replace("@UNPACK@", c_backend._unpack_macros()))
