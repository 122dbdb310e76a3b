"""The job's warnings and ETA are pure functions (service.jobs.warnings, service.jobs.eta)."""

from __future__ import annotations

from service.jobs.eta import circuit_s, job_eta_s, sweep_eta_s
from service.jobs.record import Circuit, Result
from service.jobs.warnings import job_warnings
from trainer.gates import GATE_NAMES


def _circuit(gates: int, live: int, depth: int) -> Circuit:
    histogram = dict.fromkeys(GATE_NAMES, 0) | {"A": gates}
    return Circuit(gates=gates, gatesLive=live, depth=depth, imagesPerS=1.0, verified=True,
                   gateHistogram=histogram)  # fmt: skip


def test_the_seeds_collapsed_network_gets_both_warnings() -> None:
    """The README's body as measured in issue 21: 0.197 discrete, 0.858 relaxed, 13 live
    gates of 13,336, depth 1."""
    result = Result(epoch=5, val_acc_discrete=0.2, test_acc_discrete=0.197, test_acc=0.858,
                    discretization_gap=0.661)  # fmt: skip
    warnings = job_warnings(result, _circuit(13_336, 13, 1), layers=4)
    assert [w.code for w in warnings] == ["discretization_gap", "collapsed"]
    assert "13 of 13,336 gates are live" in warnings[1].message
    assert "depth 1" in warnings[1].message


def test_a_healthy_network_gets_none_and_each_rule_alone_fires() -> None:
    good = Result(epoch=3, test_acc_discrete=0.9, test_acc=0.95, discretization_gap=0.05)
    assert job_warnings(good, _circuit(2000, 1000, 2), layers=2) == []
    assert job_warnings(good, _circuit(1000, 1000, 1), layers=1) == []  # one layer: depth 1
    assert [w.code for w in job_warnings(good, _circuit(2000, 1000, 1), layers=2)] == ["collapsed"]
    assert [w.code for w in job_warnings(good, _circuit(2000, 99, 2), layers=2)] == ["collapsed"]
    gap = Result(epoch=3, test_acc_discrete=0.8, test_acc=0.91, discretization_gap=0.11)
    assert [w.code for w in job_warnings(gap, None)] == ["discretization_gap"]
    assert job_warnings(None, None) == []


def test_a_jobs_eta_is_its_mean_epoch_times_epochs_left_plus_the_circuit() -> None:
    assert circuit_s(13_336) == 1.0
    assert job_eta_s([2.0, 4.0], 2, 5, 0) == 9.0
    etas = [job_eta_s([1.0] * e, e, 5, 13_336) for e in range(1, 6)]
    assert etas == sorted(etas, reverse=True) and etas[-1] == 1.0


def test_a_sweeps_eta_counts_waves_of_its_parallelism() -> None:
    assert sweep_eta_s([], 0, [], 1) == 0.0
    assert sweep_eta_s([None], 3, [], 1) is None  # nothing finished: no run time known
    assert sweep_eta_s([5.0], 0, [10.0], 2) == 5.0
    # 4 left, 2 at a time, 10 s each, the running ones end in 5 and 7 s: 5 + 2 waves
    assert sweep_eta_s([5.0, 7.0], 4, [10.0, 10.0], 2) == 25.0
    assert sweep_eta_s([], 4, [10.0], 4) == 10.0
