"""The circuit optimizer: each pass on tiny networks whose answer is known, and every pass
keeping the outputs bit for bit on random networks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from trainer.circuit import graph, ops
from trainer.circuit.synthetic import random_network
from trainer.export import DiscreteLayer, DiscreteNetwork, load_network, save_network

AND, OR, XOR, NAND = 1, 7, 6, 14
A_AND_NOT_B, NOT_A_AND_B = 2, 4


def network(
    in_dim: int, grouping: int, *layers: tuple[list[int], list[int], list[int]]
) -> DiscreteNetwork:
    """A DiscreteNetwork from (a, b, op) lists per layer."""
    built = [
        DiscreteLayer(np.asarray(a, np.int64), np.asarray(b, np.int64), np.asarray(op, np.uint8))
        for a, b, op in layers
    ]
    return DiscreteNetwork(in_dim, grouping, built, {})


def random_net(
    tmp_path: Path, in_dim: int, widths: list[int], grouping: int, seed: int
) -> DiscreteNetwork:
    """A random network through network.json, as the compiler gets it."""
    return load_network(save_network(random_network(in_dim, widths, grouping, seed=seed), tmp_path))


def all_inputs(in_dim: int) -> np.ndarray:
    return ((np.arange(1 << in_dim)[:, None] >> np.arange(in_dim)) & 1).astype(np.uint8)


def same_outputs(net: DiscreteNetwork, c: graph.Circuit) -> bool:
    x = all_inputs(net.in_dim)
    return bool(np.array_equal(graph.evaluate(c, x), net.outputs(x)))


def test_gate_arithmetic_matches_the_trainers_truth_tables() -> None:
    from trainer.gates import truth_table_bit

    for op in range(16):
        for a in (0, 1):
            for b in (0, 1):
                assert ops.evaluate(op, a, b) == truth_table_bit(op, a, b)
                assert ops.evaluate(ops.NEGATE_A[op], a, b) == ops.evaluate(op, 1 - a, b)
                assert ops.evaluate(ops.NEGATE_B[op], a, b) == ops.evaluate(op, a, 1 - b)
                assert ops.evaluate(ops.SWAP[op], a, b) == ops.evaluate(op, b, a)
        assert (op in ops.SYMMETRIC) == (ops.SWAP[op] == op)


def test_from_network_keeps_every_gate_and_the_outputs() -> None:
    net = network(3, 2, ([0, 1, 2], [1, 2, 0], [AND, OR, XOR]), ([0, 1], [2, 2], [XOR, AND]))
    c = graph.from_network(net)
    assert c.gates == 5 and len(c.outputs) == 2
    assert graph.depth(c) == 2
    assert graph.histogram(c)[XOR] == 2
    assert same_outputs(net, c)


def test_remove_dead_removes_gates_no_output_reads_transitively() -> None:
    # Layer 3 reads only gate 0 of layer 2; gate 0 of layer 2 reads gates 0 and 1 of
    # layer 1, so layer 1's gate 2 and layer 2's gates 1, 2 are dead.
    net = network(
        3,
        1,
        ([0, 1, 2], [1, 2, 0], [AND, OR, XOR]),
        ([0, 2, 2], [1, 1, 0], [XOR, AND, OR]),
        ([0], [0], [AND]),
    )
    c = graph.from_network(net)
    dead = graph.remove_dead(c)
    assert (c.gates, dead.gates) == (7, 4)
    assert dead.op.tolist() == [AND, OR, XOR, AND]
    assert same_outputs(net, dead)


def test_remove_dead_keeps_a_gate_read_by_a_later_live_gate() -> None:
    net = network(2, 1, ([0, 0], [1, 1], [AND, OR]), ([0], [1], [XOR]))
    assert graph.remove_dead(graph.from_network(net)).gates == 3


def test_fold_constants_turns_constant_gates_and_their_readers_into_literals() -> None:
    # Layer 1: x0 AND x1, FALSE, TRUE. Layer 2: g0 AND FALSE (-> 0), g0 OR FALSE (-> g0),
    # g0 XOR TRUE (-> NOT g0), TRUE AND TRUE (-> 1).
    net = network(
        2,
        4,
        ([0, 0, 0], [1, 1, 1], [AND, 0, 15]),
        ([0, 0, 0, 2], [1, 1, 2, 2], [AND, OR, XOR, AND]),
    )
    folded = graph.fold_constants(graph.from_network(net))
    g0 = 2 * folded.first_gate_node
    assert folded.gates == 1 and folded.op.tolist() == [AND]
    assert folded.outputs.tolist() == [graph.FALSE_LIT, g0, g0 ^ 1, graph.TRUE_LIT]
    assert len(folded.outputs) == 4  # a constant output still exists
    assert same_outputs(net, folded)


def test_collapse_wires_makes_pass_and_not_gates_wires_absorbed_by_readers() -> None:
    # Layer 1: A(x0, x1), NOT A(x0, x1), B(x0, x1), NOT B(x0, x1). Layer 2 ANDs them.
    net = network(
        2,
        2,
        ([0, 0, 0, 0], [1, 1, 1, 1], [3, 12, 5, 10]),
        ([1, 0], [2, 3], [AND, AND]),
    )
    wired = graph.collapse_wires(graph.from_network(net))
    # NOT x0 AND x1, and x0 AND NOT x1: the inversions went into the gate ids.
    assert wired.op.tolist() == [NOT_A_AND_B, A_AND_NOT_B]
    assert wired.a.tolist() == [2, 2] and wired.b.tolist() == [4, 4]
    assert same_outputs(net, wired)


def test_collapse_wires_handles_a_gate_reading_one_signal_twice() -> None:
    net = network(2, 3, ([0, 0, 1], [0, 0, 1], [AND, XOR, NAND]))
    wired = graph.collapse_wires(graph.from_network(net))
    assert wired.gates == 0
    assert wired.outputs.tolist() == [2, graph.FALSE_LIT, 4 ^ 1]
    assert same_outputs(net, wired)


def test_merge_duplicates_merges_same_commuted_and_complement_gates() -> None:
    # x0 AND x1, x1 AND x0, NAND(x0, x1), x0 AND NOT x1, NOT x1 AND x0 (= NOT A AND B on
    # (x1, x0)), x0 OR x1: three distinct functions.
    net = network(
        2,
        6,
        ([0, 1, 0, 0, 1, 0], [1, 0, 1, 1, 0, 1], [AND, AND, NAND, A_AND_NOT_B, NOT_A_AND_B, OR]),
    )
    merged = graph.merge_duplicates(graph.from_network(net))
    assert merged.gates == 3
    g = 2 * merged.first_gate_node
    assert merged.outputs.tolist()[:3] == [g, g, g ^ 1]
    assert merged.outputs[3] == merged.outputs[4]
    assert same_outputs(net, merged)


def test_merge_duplicates_merges_across_layers_after_substitution() -> None:
    # Two copies of a layer compute the same thing; their readers become duplicates too.
    net = network(3, 2, ([0, 0], [1, 1], [XOR, XOR]), ([0, 1], [1, 0], [AND, AND]))
    merged = graph.remove_dead(graph.merge_duplicates(graph.from_network(net)))
    assert merged.gates == 2  # one XOR, and AND(g, g) which wires alone would remove
    assert graph.optimize(graph.from_network(net)).gates == 1
    assert same_outputs(net, merged)


PASSES: list[Callable[[graph.Circuit], graph.Circuit]] = [
    graph.remove_dead,
    graph.fold_constants,
    graph.collapse_wires,
    graph.merge_duplicates,
    graph.optimize,
]


@pytest.mark.parametrize(
    ("in_dim", "widths", "grouping", "seed"),
    [(6, [12, 8], 2, 0), (10, [40, 40, 30], 10, 1), (32, [64] * 5, 4, 2), (9, [5, 6], 3, 3)],
)
@pytest.mark.parametrize("step", PASSES, ids=lambda f: f.__name__)
def test_every_pass_keeps_the_outputs_of_random_networks(
    tmp_path: Path,
    in_dim: int,
    widths: list[int],
    grouping: int,
    seed: int,
    step: Callable[[graph.Circuit], graph.Circuit],
) -> None:
    net = random_net(tmp_path, in_dim, widths, grouping, seed)
    c = graph.from_network(net)
    out = step(c)
    assert out.gates <= c.gates
    assert len(out.outputs) == len(c.outputs)
    x = np.random.default_rng(seed).integers(0, 2, (300, in_dim), dtype=np.uint8)
    assert np.array_equal(graph.evaluate(out, x), net.outputs(x))


def test_optimize_reaches_a_fixed_point_and_leaves_only_two_input_gates(tmp_path: Path) -> None:
    c = graph.from_network(random_net(tmp_path, 16, [200, 200, 100], 10, 5))
    once = graph.optimize(c)
    twice = graph.optimize(once)
    assert 0 < once.gates < c.gates
    for field in ("op", "a", "b", "outputs"):
        assert np.array_equal(getattr(once, field), getattr(twice, field))
    hist = graph.histogram(once)
    assert all(hist[op] == 0 for op in (0, 3, 5, 10, 12, 15))  # no constant or wire left
    assert (
        len(set(zip(once.op.tolist(), once.a.tolist(), once.b.tolist(), strict=True))) == once.gates
    )
