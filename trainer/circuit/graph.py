"""The circuit as a flat gate graph, loaded from network.json, and the passes that shrink it.

Signals are *literals*, as in AIGER: literal 2 * node + neg is node `node`, inverted when
neg is 1. Node 0 is the constant FALSE (so literal 0 is FALSE and 1 is TRUE), nodes
1..in_dim are the inputs, and gate i is node in_dim + 1 + i. Gates are in topological order
(each reads only nodes before it) and always read plain literals: an inversion that reaches
a gate input is absorbed into its gate id (see `ops.NEGATE_A`), so a NOT never costs a gate.
Outputs, the GroupSum bits, are literals and may be inverted or constant.

Every pass returns a new circuit that computes the same outputs bit for bit. The rewriting
passes share one topological sweep (`_rewrite`): each gate is looked at once, after its
inputs are final, so one sweep reaches the fixed point of the local rules.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from trainer.circuit import ops
from trainer.export import DiscreteNetwork

FALSE_LIT = 0
TRUE_LIT = 1


@dataclass(frozen=True)
class Circuit:
    """Gates (op, a, b) over literals, and the output literals grouped by class."""

    in_dim: int
    grouping: int
    op: np.ndarray  # (gates,) uint8 gate ids
    a: np.ndarray  # (gates,) int64 literals of the first inputs
    b: np.ndarray  # (gates,) int64 literals of the second inputs
    outputs: np.ndarray  # (m,) int64 literals; class c owns [c * m / k, (c + 1) * m / k)

    @property
    def gates(self) -> int:
        return len(self.op)

    @property
    def first_gate_node(self) -> int:
        return self.in_dim + 1

    @property
    def nodes(self) -> int:
        return self.in_dim + 1 + self.gates


def from_network(network: DiscreteNetwork) -> Circuit:
    """The trained network as it is: one gate per neuron, layers laid end to end."""
    ops_, a_, b_ = [], [], []
    base = 1  # node of the first signal the layer reads: the inputs for the first layer
    offset = 1 + network.in_dim  # node of the layer's first gate
    for layer in network.layers:
        ops_.append(layer.op.astype(np.uint8))
        a_.append(2 * (base + layer.a.astype(np.int64)))
        b_.append(2 * (base + layer.b.astype(np.int64)))
        base, offset = offset, offset + len(layer.op)
    empty = np.zeros(0, np.int64)
    op = np.concatenate(ops_) if ops_ else np.zeros(0, np.uint8)
    a = np.concatenate(a_) if a_ else empty
    b = np.concatenate(b_) if b_ else empty
    last = len(network.layers[-1].op) if network.layers else network.in_dim
    outputs = 2 * np.arange(base, base + last, dtype=np.int64)
    return Circuit(network.in_dim, network.grouping, op, a, b, outputs)


def _check(c: Circuit) -> None:
    """Invariants every pass relies on; cheap enough to run on every result."""
    nodes = c.first_gate_node + np.arange(c.gates)
    for name, lits in (("a", c.a), ("b", c.b)):
        if c.gates and ((lits & 1).any() or (lits // 2 >= nodes).any() or (lits < 0).any()):
            raise AssertionError(f"gate input {name} is inverted or not before its gate")
    if len(c.outputs) and (c.outputs // 2 >= c.nodes).any():
        raise AssertionError("an output reads a node that does not exist")
    if len(c.outputs) % c.grouping:
        raise AssertionError("outputs do not split evenly into the classes")


def remove_dead(c: Circuit) -> Circuit:
    """Drop gates that no output reads, directly or through other gates; renumber the rest.

    The GroupSum outputs are the only roots, so a gate is live exactly when some output's
    cone contains it. Walking gates last to first marks each live gate's inputs live.
    """
    first = c.first_gate_node
    live = np.zeros(c.nodes, bool)
    live[c.outputs // 2] = True
    a_nodes, b_nodes = (c.a // 2).tolist(), (c.b // 2).tolist()
    live_list = live.tolist()
    for i in range(c.gates - 1, -1, -1):
        if live_list[first + i]:
            live_list[a_nodes[i]] = True
            live_list[b_nodes[i]] = True
    live = np.asarray(live_list, bool)
    keep = live[first:]
    new_node = np.arange(c.nodes, dtype=np.int64)
    new_node[first:] = first + np.cumsum(keep) - 1

    def remap(lits: np.ndarray) -> np.ndarray:
        return 2 * new_node[lits // 2] + (lits & 1)

    out = Circuit(
        c.in_dim,
        c.grouping,
        c.op[keep].copy(),
        remap(c.a[keep]),
        remap(c.b[keep]),
        remap(c.outputs),
    )
    _check(out)
    return out


def fold_constants(c: Circuit) -> Circuit:
    """FALSE/TRUE gates become constants; a gate with a constant input becomes a wire.

    A gate with one constant input computes a function of the other input alone, which is
    always a constant, that input, or its inverse: a literal, never a gate.
    """
    return _rewrite(c, constants=True, wires=False, merge=False)


def collapse_wires(c: Circuit) -> Circuit:
    """Pass-through gates (A, B) become wires, NOT A / NOT B become inverted wires.

    A gate that reads the same signal twice is a one-input gate too and goes the same way.
    Consumers absorb the inversion into their gate id, so no NOT is ever evaluated.
    """
    return _rewrite(c, constants=False, wires=True, merge=False)


def merge_duplicates(c: Circuit) -> Circuit:
    """Gates computing the same function of the same two signals become one (structural hash).

    Two gates match when their ids and inputs are equal after putting the lower input
    first (an asymmetric id is rewritten for the swap), and a gate that computes the
    complement of an earlier one becomes that gate's inverted wire.
    """
    return _rewrite(c, constants=False, wires=False, merge=True)


def optimize(c: Circuit) -> Circuit:
    """All passes to their fixed point: dead gates out, then one rewriting sweep, dead out."""
    return remove_dead(_rewrite(remove_dead(c), constants=True, wires=True, merge=True))


def _literal_of(function: tuple[int, int], lit: int) -> int:
    """The literal of the one-input function (f(0), f(1)) applied to signal `lit`."""
    f0, f1 = function
    if f0 == f1:
        return TRUE_LIT if f0 else FALSE_LIT
    return lit if f1 else lit ^ 1


def _rewrite(c: Circuit, *, constants: bool, wires: bool, merge: bool) -> Circuit:
    """One topological sweep applying the enabled local rules to each gate in turn."""
    first = c.first_gate_node
    subst = list(range(0, 2 * first, 2))  # node -> literal it now is; inputs stay
    new_op: list[int] = []
    new_a: list[int] = []
    new_b: list[int] = []
    table: dict[tuple[int, int, int], tuple[int, int]] = {}
    neg_a, neg_b, swap = ops.NEGATE_A, ops.NEGATE_B, ops.SWAP
    for op, a, b in zip(c.op.tolist(), c.a.tolist(), c.b.tolist(), strict=True):
        la, lb = subst[a >> 1] ^ (a & 1), subst[b >> 1] ^ (b & 1)
        if la & 1:
            op, la = neg_a[op], la ^ 1
        if lb & 1:
            op, lb = neg_b[op], lb ^ 1
        result = -1
        if constants:
            if op == ops.FALSE or op == ops.TRUE:
                result = TRUE_LIT if op == ops.TRUE else FALSE_LIT
            elif la == FALSE_LIT:
                result = _literal_of(ops.restrict_a(op, 0), lb)
            elif lb == FALSE_LIT:
                result = _literal_of(ops.restrict_b(op, 0), la)
        if result < 0 and wires:
            if op == ops.PASS_A:
                result = la
            elif op == ops.PASS_B:
                result = lb
            elif op == ops.NOT_A:
                result = la ^ 1
            elif op == ops.NOT_B:
                result = lb ^ 1
            elif la == lb:
                result = _literal_of(ops.diagonal(op), la)
        if result < 0 and merge:
            k_op, k_a, k_b = (swap[op], lb, la) if la > lb else (op, la, lb)
            inverted = 1 if k_op & 8 else 0  # key on the form with f(0, 0) = 0
            key = (ops.complement(k_op) if inverted else k_op, k_a, k_b)
            found = table.get(key)
            if found is not None:
                node, node_inverted = found
                result = 2 * node + (inverted ^ node_inverted)
            else:
                table[key] = (first + len(new_op), inverted)
        if result < 0:
            result = 2 * (first + len(new_op))
            new_op.append(op)
            new_a.append(la)
            new_b.append(lb)
        subst.append(result)
    sub = np.asarray(subst, np.int64)
    outputs = sub[c.outputs // 2] ^ (c.outputs & 1)
    out = Circuit(
        c.in_dim,
        c.grouping,
        np.asarray(new_op, np.uint8),
        np.asarray(new_a, np.int64),
        np.asarray(new_b, np.int64),
        outputs,
    )
    _check(out)
    return out


def levels(c: Circuit) -> np.ndarray:
    """(nodes,) longest path in gates from the inputs to each node (inputs, constant: 0)."""
    level = [0] * c.first_gate_node
    for a, b in zip((c.a // 2).tolist(), (c.b // 2).tolist(), strict=True):
        level.append(1 + max(level[a], level[b]))
    return np.asarray(level, np.int64)


def depth(c: Circuit) -> int:
    """The longest path in gates from an input to an output."""
    if not len(c.outputs):
        return 0
    return int(levels(c)[c.outputs // 2].max())


def histogram(c: Circuit) -> list[int]:
    """How many gates of each of the 16 ids the circuit has, indexed by id."""
    return np.bincount(c.op, minlength=ops.NUM_OPS).astype(int).tolist()


def evaluate(c: Circuit, x: np.ndarray) -> np.ndarray:
    """(n, in_dim) bits -> (n, m) output bits, in numpy, level by level.

    The reference for the passes' tests: it reads the circuit's literals directly, so it
    checks the graph without any code generator in between.
    """
    x = np.asarray(x).astype(bool)
    n = len(x)
    values = np.zeros((c.nodes, n), bool)
    values[1 : c.first_gate_node] = x.T
    level = levels(c)[c.first_gate_node :]
    order = np.argsort(level, kind="stable")
    bounds = np.searchsorted(level[order], np.arange(1, int(level.max(initial=0)) + 2))
    for lo, hi in itertools.pairwise(bounds.tolist()):
        idx = order[lo:hi]
        va = values[c.a[idx] // 2].astype(np.uint8)
        vb = values[c.b[idx] // 2].astype(np.uint8)
        shift = 3 - (2 * va + vb)
        values[c.first_gate_node + idx] = (c.op[idx, None] >> shift) & 1
    return (values[c.outputs // 2] ^ (c.outputs & 1)[:, None].astype(bool)).T


def scores(c: Circuit, x: np.ndarray) -> np.ndarray:
    """(n, k) class scores: ones among each class's outputs."""
    out = evaluate(c, x)
    return out.reshape(len(out), c.grouping, -1).sum(-1)
