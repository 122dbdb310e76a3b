"""Check a compiled circuit against the numpy evaluator and the Verilog simulation.

Three independent evaluations of one network: trainer.export's truth-table lookup over the
trained layers, the C library of the optimized graph, and iverilog running the Verilog
module written from that graph. Agreement of all three on a data set checks the
optimizer, both code generators and the C runtime (packing, GroupSum, ties) at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer.circuit import verilog
from trainer.circuit.bundle import CompiledCircuit


@dataclass(frozen=True)
class Verification:
    samples: int
    accuracy: float | None  # of the compiled circuit, where labels were given
    c_vs_numpy: int  # samples on which the C library and the numpy evaluator agree
    verilog_samples: int  # how many of the first samples were simulated (0: none)
    verilog_vs_c: int
    verilog_vs_numpy: int
    verilog_skipped: str | None  # why no simulation ran, if none did

    @property
    def disagreements(self) -> int:
        """Samples where the C library differs from numpy, plus simulated samples where the
        Verilog module differs from either."""
        sim = self.verilog_samples
        return (self.samples - self.c_vs_numpy) + (
            max(sim - self.verilog_vs_c, sim - self.verilog_vs_numpy) if sim else 0
        )

    @property
    def verified(self) -> bool:
        return self.disagreements == 0

    def lines(self) -> list[str]:
        """Human-readable agreement of each pair, for the CLI."""
        out = [f"samples={self.samples}"]
        out.append(f"c_vs_numpy={self.c_vs_numpy}/{self.samples}")
        if self.verilog_samples:
            out.append(f"verilog_vs_c={self.verilog_vs_c}/{self.verilog_samples}")
            out.append(f"verilog_vs_numpy={self.verilog_vs_numpy}/{self.verilog_samples}")
        else:
            out.append(f"verilog=skipped ({self.verilog_skipped})")
        if self.accuracy is not None:
            out.append(f"accuracy={self.accuracy:.4f}")
        out.append(f"disagreements={self.disagreements}")
        return out


def verify(
    compiled: CompiledCircuit,
    x: np.ndarray,
    y: np.ndarray | None = None,
    *,
    verilog_samples: int | None = None,
    threads: int = 1,
) -> Verification:
    """Run all three on x; simulate the first `verilog_samples` (None: all, 0: none)."""
    reference = compiled.network.predict(x)
    ours = compiled.library.predict(x, threads)
    c_ok = int((ours == reference).sum())
    accuracy = float((ours == np.asarray(y)).mean()) if y is not None and len(x) else None
    limit = len(x) if verilog_samples is None else min(verilog_samples, len(x))
    skipped = None
    sim_vs_c = sim_vs_np = 0
    if limit <= 0:
        skipped, limit = "not asked for", 0
    elif verilog.simulator() is None:
        skipped, limit = "iverilog is not installed", 0
    else:
        sim, _ = verilog.simulate(compiled.live, compiled.module_path, x[:limit])
        sim_vs_c = int((sim == ours[:limit]).sum())
        sim_vs_np = int((sim == reference[:limit]).sum())
    return Verification(len(x), accuracy, c_ok, limit, sim_vs_c, sim_vs_np, skipped)
