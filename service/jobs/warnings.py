"""What a Succeeded run must not hide (docs/design.md, "Job fields": `warnings`).

A run can end well and still hand back a network nobody should use: one whose discrete
accuracy is far below the relaxed one the training optimised, or one that collapsed to a
few live gates (often all pass-through, a circuit of depth 1). The run stays Succeeded; the
job carries these, and the page, the job list, the sweep table and the CLI show them.
Pure functions of the job's `result` and `circuit`, so every reader agrees.
"""

from __future__ import annotations

from service.jobs.record import Circuit, JobWarning, Result

GAP_LIMIT = 0.10  # relaxed minus discrete test accuracy of the kept network
LIVE_MIN = 0.05  # live gates of all gates, below which a network has collapsed
DISCRETIZATION_GAP = "discretization_gap"
COLLAPSED = "collapsed"


def job_warnings(
    result: Result | None, circuit: Circuit | None, layers: int = 2
) -> list[JobWarning]:
    """The warnings of a Succeeded run with this result and circuit (either may be None:
    a trainer that printed no kept result, a circuit that could not be built) and this many
    logic layers (a one-layer network has depth 1 by construction: no collapse)."""
    out: list[JobWarning] = []
    if result is not None and result.discretization_gap > GAP_LIMIT:
        out.append(
            JobWarning(
                code=DISCRETIZATION_GAP,
                message=(
                    f"the discrete network scores {result.test_acc_discrete:.3f} on the test "
                    f"set against {result.test_acc:.3f} relaxed: a gap of "
                    f"{result.discretization_gap:.3f} (above {GAP_LIMIT:.2f}); the relaxed "
                    "accuracy is not what the circuit computes"
                ),
            )
        )
    if circuit is not None and circuit.gates > 0:
        live = circuit.gatesLive / circuit.gates
        shallow = circuit.depth <= 1 < layers
        if live < LIVE_MIN or shallow:
            why = (
                f"only {circuit.gatesLive:,} of {circuit.gates:,} gates are live "
                f"({100 * live:.2g} %)"
                if live < LIVE_MIN
                else f"its circuit has depth {circuit.depth}"
            )
            if live < LIVE_MIN and shallow:
                why += f" and depth {circuit.depth}"
            out.append(
                JobWarning(
                    code=COLLAPSED,
                    message=f"the network collapsed: {why}; it barely reads its inputs",
                )
            )
    return out
