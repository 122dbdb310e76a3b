"""`gatequeue sweep` (submit many runs at once) and `gatequeue sweeps` (list, show, follow,
cancel), over the sweep routes of docs/sweeps.md.

    gatequeue sweep --gate-optimizer softmax --gates 1000 --epochs 5 \\
        --grid gates=1000,4000 --grid gateOptimizer=softmax,entmax \\
        --random 8 --space learningRate=log:1e-3:1e-1 --max-parallel 2 --wait

The base flags are the flags of `gatequeue submit` (generated from the same options); grid
and space values are read with their option's type, so `--grid gates=1e3` is refused here,
before the request, as the API would refuse it.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from service.cli.common import (
    EXIT_JOB_FAILED,
    EXIT_OK,
    api_parent,
    client_command,
    duration,
    escape,
    num,
    status_markup,
    warning_lines,
)
from service.cli.errors import SweepFlagError
from service.cli.terminal import markup_safe
from service.client import GateQueueClient, GateQueueError, Sweep
from service.config import Settings
from service.jobs.request import REQUEST_OPTIONS
from service.jobs.status import Status
from service.sweeps.record import SweepStatus
from service.sweeps.spec import DEFAULT_METRIC, MAX_SEEDS
from trainer.flags import add_option_flag, given
from trainer.options import Option

_BY_NAME: dict[str, Option] = {o.name: o for o in REQUEST_OPTIONS}
# Set on the sweep itself (its name, its jobs' priority), not on its base.
_SWEEP_OWN = ("name", "priority")
_SPACES = {"log": "logUniform", "uniform": "uniform", "int": "intUniform", "choice": "choice"}


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    api = api_parent()
    sweep = subparsers.add_parser(
        "sweep",
        parents=[api],
        help="submit a sweep: a grid, random samples and/or a list of runs",
        description="Submit many runs in one request (docs/sweeps.md). The base flags are "
        "those of `gatequeue submit`; --grid, --run and --space override them per run.",
    )
    sweep.add_argument(
        "--grid", action="append", default=[], metavar="OPTION=V1,V2,...",
        help="every combination of the grid's values is a run (repeat for more options)",
    )  # fmt: skip
    sweep.add_argument(
        "--run", action="append", default=[], metavar="'OPTION=V OPTION=V'",
        help="one explicit run (repeatable); crossed with the grid when both are given",
    )  # fmt: skip
    sweep.add_argument("--random", type=int, metavar="N", help="add N random samples")
    sweep.add_argument(
        "--random-seed", type=int, default=0, help="the sampler's seed (not the runs' --seed)"
    )
    sweep.add_argument(
        "--space", action="append", default=[], metavar="OPTION=KIND:...",
        help="where a random sample draws OPTION: log:LO:HI, uniform:LO:HI, int:LO:HI or "
        "choice:A,B,C",
    )  # fmt: skip
    sweep.add_argument(
        "--scheduler", metavar="asha[:R:ETA] | median[:G]",
        help="stop runs early: ASHA with rungs at R, R*ETA, ... (defaults 1 and 4), or the "
        "median rule from epoch G (default 1) (docs/sweeps.md)",
    )  # fmt: skip
    sweep.add_argument(
        "--search", choices=("grid", "random", "tpe"),
        help="how combinations are picked: every one (grid), or --trials drawn at random or "
        "asked of TPE from --space and the --grid lists, as runs finish",
    )  # fmt: skip
    sweep.add_argument("--trials", type=int, metavar="N", help="combinations a search makes")
    sweep.add_argument(
        "--search-seed", type=int, default=0, help="the search's seed (not the runs' --seed)"
    )
    sweep.add_argument("--max-parallel", type=int, metavar="M", help="at most M Running at once")
    sweep.add_argument("--priority", type=int, help="of every job of the sweep (-100..100)")
    sweep.add_argument(
        "--metric", default=DEFAULT_METRIC,
        help="ranks the runs (default %(default)s; a test metric selects on the test set)",
    )  # fmt: skip
    sweep.add_argument(
        "--seeds", type=int, default=1, metavar="N",
        help=f"runs per combination, seeds 0..N-1 (1..{MAX_SEEDS}); tables show mean ± std",
    )  # fmt: skip
    sweep.add_argument("--name", help="a label for the sweep")
    sweep.add_argument("--idempotency-key", help="retrying with the same key returns the sweep")
    sweep.add_argument(
        "--wait", action="store_true",
        help="follow the sweep with one progress bar, then print its runs best first; "
        "exit 0 only if every run Succeeded",
    )  # fmt: skip
    base = sweep.add_argument_group("base (flags of `gatequeue submit`)")
    for option in REQUEST_OPTIONS:
        if option.name not in _SWEEP_OWN:
            add_option_flag(base, option, request=True)
    sweep.set_defaults(func=client_command(cmd_sweep))

    sweeps = subparsers.add_parser(
        "sweeps", parents=[api], help="list sweeps, or show, follow or cancel one"
    )
    sweeps.add_argument("sweep", nargs="?", metavar="SWEEP", help="one sweep's runs")
    sweeps.add_argument("--wait", action="store_true", help="follow SWEEP to its end")
    sweeps.add_argument("--cancel", action="store_true", help="cancel every job of SWEEP")
    sweeps.add_argument("--limit", type=int, default=20, help="how many (default %(default)s)")
    sweeps.add_argument("--json", action="store_true", help="as JSON")
    sweeps.set_defaults(func=client_command(cmd_sweeps))


# -- parsing the sweep flags -------------------------------------------------------------


def _option(name: str) -> Option:
    """`gateOptimizer`, `gate-optimizer` and `--gate-optimizer` name the same option."""
    key = re.sub(r"-(\w)", lambda m: m.group(1).upper(), name.strip().lstrip("-"))
    if key not in _BY_NAME:
        raise SweepFlagError(f"{name!r} is no option of a job")
    return _BY_NAME[key]


def _value(option: Option, text: str) -> Any:
    text = text.strip()
    try:
        if option.kind is int:
            if not re.fullmatch(r"[-+]?\d+", text):
                raise ValueError
            return int(text)
        if option.kind is float:
            return float(text)
    except ValueError:
        raise SweepFlagError(
            f"{option.name}: {text!r} is not {'an integer' if option.kind is int else 'a number'}"
        ) from None
    return text


def _pair(flag: str, text: str) -> tuple[Option, str]:
    name, sep, rest = text.partition("=")
    if not sep or not rest.strip():
        raise SweepFlagError(f"{flag} {text!r}: expected OPTION=VALUE")
    return _option(name), rest


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for item in items:
        option, rest = _pair("--grid", item)
        grid[option.name] = [_value(option, v) for v in rest.split(",")]
    return grid


def parse_runs(items: list[str]) -> list[dict[str, Any]]:
    runs = []
    for item in items:
        run: dict[str, Any] = {}
        for word in shlex.split(item):
            option, rest = _pair("--run", word)
            run[option.name] = _value(option, rest)
        runs.append(run)
    return runs


def parse_space(items: list[str]) -> dict[str, dict[str, list[Any]]]:
    space: dict[str, dict[str, list[Any]]] = {}
    for item in items:
        option, rest = _pair("--space", item)
        kind, _, spec = rest.partition(":")
        if kind not in _SPACES:
            raise SweepFlagError(
                f"--space {item!r}: the kind is one of {', '.join(_SPACES)}, not {kind!r}"
            )
        if kind == "choice":
            values = [_value(option, v) for v in spec.split(",")]
        else:
            bounds = spec.split(":")
            if len(bounds) != 2:
                raise SweepFlagError(f"--space {item!r}: expected {kind}:LO:HI")
            try:
                values = [int(b) if kind == "int" else float(b) for b in bounds]
            except ValueError:
                raise SweepFlagError(f"--space {item!r}: LO and HI must be numbers") from None
        space[option.name] = {_SPACES[kind]: values}
    return space


def parse_scheduler(text: str) -> dict[str, Any]:
    """`asha`, `asha:R:ETA`, `median` or `median:G` as the sweep's `scheduler`."""
    kind, *numbers = text.strip().split(":")
    try:
        values = [int(n) for n in numbers]
    except ValueError:
        raise SweepFlagError(f"--scheduler {text!r}: R, ETA and G are integers") from None
    if kind == "asha" and len(values) in (0, 2):
        r, eta = values or [1, 4]
        return {"type": "asha", "minEpochs": r, "reductionFactor": eta}
    if kind == "median" and len(values) in (0, 1):
        return {"type": "median", "graceEpochs": values[0] if values else 1}
    raise SweepFlagError(f"--scheduler {text!r}: expected asha, asha:R:ETA, median or median:G")


def sweep_body(args: argparse.Namespace) -> dict[str, Any]:
    """The POST /sweeps body from the flags (raises SweepFlagError)."""
    base = given(args, (o for o in REQUEST_OPTIONS if o.name not in _SWEEP_OWN))
    body: dict[str, Any] = {"base": base, "metric": args.metric}
    if args.seeds != 1:
        body["seeds"] = args.seeds
    if args.grid:
        body["grid"] = parse_grid(args.grid)
    if args.run:
        body["runs"] = parse_runs(args.run)
    adaptive = args.search in ("random", "tpe")
    if adaptive:
        if args.trials is None or args.random is not None:
            raise SweepFlagError(f"--search {args.search} needs --trials N (and no --random)")
        body["search"] = {"type": args.search, "trials": args.trials, "seed": args.search_seed}
        if args.space:
            body["space"] = parse_space(args.space)
    elif args.trials is not None:
        raise SweepFlagError("--trials goes with --search random or tpe")
    elif args.search == "grid":
        body["search"] = {"type": "grid"}
    if args.scheduler is not None:
        body["scheduler"] = parse_scheduler(args.scheduler)
    if not adaptive and (args.random is not None or args.space):
        if args.random is None or not args.space:
            raise SweepFlagError("--random N and --space go together")
        body["random"] = {
            "n": args.random,
            "seed": args.random_seed,
            "space": parse_space(args.space),
        }
    for key, value in (
        ("name", args.name), ("maxParallel", args.max_parallel), ("priority", args.priority)
    ):  # fmt: skip
        if value is not None:
            body[key] = value
    return body


# -- commands ---------------------------------------------------------------------------


async def cmd_sweep(args: argparse.Namespace, settings: Settings, client: GateQueueClient) -> int:
    try:
        body = sweep_body(args)
    except SweepFlagError as exc:
        raise GateQueueError(str(exc)) from None
    sweep = await client.submit_sweep(
        base=body["base"], grid=body.get("grid"), random=body.get("random"),
        runs=body.get("runs"), max_parallel=body.get("maxParallel"),
        priority=body.get("priority"), metric=body.get("metric"), seeds=body.get("seeds"),
        name=body.get("name"), idempotency_key=args.idempotency_key,
        scheduler=body.get("scheduler"), search=body.get("search"), space=body.get("space"),
    )  # fmt: skip
    if not args.wait:
        print(sweep["id"])
        return EXIT_OK
    out = Console(highlight=False, soft_wrap=True)
    out.print(
        f"submitted sweep {sweep['id']} ({sweep['total']} runs)  "
        f"{args.api.rstrip('/')}/#/sweeps/{sweep['id']}"
    )
    return await _follow_to_end(client, sweep, out)


async def cmd_sweeps(args: argparse.Namespace, settings: Settings, client: GateQueueClient) -> int:
    out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 250)
    if args.sweep is None:
        if args.cancel or args.wait:
            raise GateQueueError("--cancel and --wait need a SWEEP")
        return await _list(client, args, out)
    if args.cancel:
        result = await client.cancel_sweep(args.sweep)
        out.print(
            f"sweep {args.sweep} {status_markup(Status.CANCELLED)}: {result['cancelled']} "
            f"pending cancelled, {result['stopping']} running asked to stop"
        )
        return EXIT_OK
    if args.wait:
        return await _follow_to_end(client, await client.sweep(args.sweep), out)
    sweep = await client.sweep(args.sweep)
    if args.json:
        print(_json(sweep))
        return EXIT_OK
    _print_sweep(out, sweep)
    return EXIT_OK


async def _list(client: GateQueueClient, args: argparse.Namespace, out: Console) -> int:
    page = await client.sweeps(limit=args.limit)
    if args.json:
        for sweep in page:
            print(_json(sweep))
        return EXIT_OK
    if not page:
        out.print("no sweeps")
        return EXIT_OK
    table = Table(box=None, pad_edge=False, header_style="bold")
    cols = ("ID", "STATUS", "NAME", "BY", "DONE", "RUNNING", "VARYING", "BEST", "ETA", "CREATED")
    for col in cols:
        table.add_column(col, no_wrap=col != "NAME", min_width=24 if col == "ID" else None)
    for sweep in page:
        best = sweep.get("best")
        table.add_row(
            sweep["id"], _sweep_status(sweep), markup_safe(sweep.get("name") or ""),
            markup_safe(sweep.get("submittedBy") or ""),
            f"{sweep['total'] - sweep['remaining']}/{sweep['total']}", str(sweep["running"]),
            markup_safe(", ".join(sweep.get("varying") or [])),
            f"{sweep['metric']}={_mean_text(best)}" if best else "",
            duration(sweep.get("etaS")),
            (sweep.get("createdAt") or "")[:19].replace("T", " "),
        )  # fmt: skip
    out.print(table)
    return EXIT_OK


def _json(sweep: Sweep) -> str:
    return json.dumps(sweep)


def _sweep_status(sweep: Sweep) -> str:
    style = {SweepStatus.ACTIVE: "cyan", SweepStatus.FINISHED: "green",
             SweepStatus.CANCELLED: "magenta"}  # fmt: skip
    return f"[{style.get(sweep['status'], 'white')}]{sweep['status']}[/]"


def _mean_text(item: dict[str, Any]) -> str:
    """`0.9012` for one run, `0.9012±0.0031 (n=3)` for a combination of several."""
    value = item.get("value", item.get("mean"))
    if value is None:
        return ""
    n, std = item.get("n", 1), item.get("std")
    if n > 1 and std is not None:
        return f"{value:.4f}±{std:.4f} (n={n})"
    return num(value)


def _progress_text(sweep: Sweep) -> str:
    counts = sweep.get("counts") or {}
    parts = [f"{n} {s.lower()}" for s, n in counts.items() if n]
    best = sweep.get("best")
    if best:
        parts.append(f"best {sweep['metric']}={_mean_text(best)}")
    if sweep.get("etaS") is not None:
        parts.append(f"eta {duration(sweep['etaS'])}")
    return ", ".join(parts)


def _print_sweep(out: Console, sweep: Sweep) -> None:
    """The headline, the sweep's warnings and its table."""
    out.print(_headline(sweep))
    for line in warning_lines(sweep):
        out.print(line)
    out.print(runs_table(sweep))


def _headline(sweep: Sweep) -> str:
    name = markup_safe(sweep.get("name") or "")
    done = sweep["total"] - sweep["remaining"]
    return (
        f"[bold]{sweep['id']}[/]  {_sweep_status(sweep)}  {name}  "
        f"{done}/{sweep['total']} done; {escape(_progress_text(sweep))}"
    ) + escape(search_text(sweep))


def search_text(sweep: Sweep) -> str:
    """`; trials 5 done / 7 asked / 12; 31 of 192 epochs of the full grid (16%), 9 stopped
    early` for a sweep with a search or a scheduler; "" otherwise."""
    if not sweep.get("scheduler") and not sweep.get("search"):
        return ""
    p, c = sweep.get("progress") or {}, sweep.get("compute") or {}
    text = f"; trials {p.get('done', 0)} done / {p.get('asked', 0)} asked / {p.get('total', 0)}"
    if c.get("gridEpochs"):
        share = 100 * c["epochs"] / c["gridEpochs"]
        text += f"; {c['epochs']} of {c['gridEpochs']} epochs of the full grid ({share:.0f}%)"
    else:
        text += f"; {c.get('epochs', 0)} epochs"
    return text + f", {c.get('stoppedEarly', 0)} stopped early"


def rung_text(run: dict[str, Any]) -> str:
    """`stopped e2 (rung 1)`, `stopped e3 (median)`, `rung 0` (training towards it), or ""."""
    stopped = run.get("stoppedEarly")
    if stopped:
        where = f"rung {stopped['rung']}" if stopped.get("rung") is not None else "median"
        return f"stopped e{stopped['epoch']} ({where})"
    if run.get("rung") is not None and run.get("targetEpoch"):
        return f"rung {run['rung']} (e{run['targetEpoch']})"
    return ""


def _kept_test_acc(run: dict[str, Any]) -> Any:
    """The kept network's test accuracy (its `result`), else the latest epoch's."""
    return (run.get("result") or run.get("latestMetrics") or {}).get("test_acc_discrete")


def runs_table(sweep: Sweep) -> Table:
    """Every run, best first (by the sweep's metric, its direction), then the rest; with
    seeds, every combination with the mean ± std and n of its runs, best mean first."""
    if (sweep.get("seeds") or 1) > 1:
        return combinations_table(sweep)
    metric = sweep["metric"]
    lowest = sweep.get("goal") == "min"
    runs = list(sweep.get("jobs") or [])
    scored = sorted(
        (r for r in runs if r.get("value") is not None),
        key=lambda r: r["value"] if lowest else -r["value"],
    )
    runs = scored + [r for r in runs if r.get("value") is None]
    best_id = (sweep.get("best") or {}).get("id")
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("#", justify="right")
    for option in sweep.get("varying") or []:
        table.add_column(option)
    table.add_column("STATUS")
    scheduled = bool(sweep.get("scheduler"))
    if scheduled:  # where each run is on its scheduler's rungs, or where it was stopped
        table.add_column("RUNG")
    table.add_column(metric, justify="right")
    if metric != "test_acc_discrete":  # the kept network's, beside the metric it was kept by
        table.add_column("test_acc_discrete", justify="right")
    results = any(run.get("result") for run in runs)
    if results:  # the rest of the kept network's result: its epoch and discretization gap
        table.add_column("KEPT", justify="right")
        table.add_column("GAP", justify="right")
    circuits = any(run.get("circuit") for run in runs)
    if circuits:  # what each run compiled to (docs/circuits.md)
        table.add_column("LIVE GATES", justify="right")
        table.add_column("IMAGES/S", justify="right")
    table.add_column("ID", no_wrap=True)
    for run in runs:
        options = run.get("options") or {}
        cells = [str(run["index"])]
        cells += [markup_safe(num(options.get(o))) for o in sweep.get("varying") or []]
        cells.append(status_markup(run.get("status")))
        if scheduled:
            cells.append(escape(rung_text(run)))
        cells.append(num(run["value"]) if run.get("value") is not None else "")
        if metric != "test_acc_discrete":
            acc = _kept_test_acc(run)
            cells.append(num(acc) if acc is not None else "")
        if results:
            result = run.get("result") or {}
            cells.append(str(result["epoch"]) if result else "")
            cells.append(num(result["discretization_gap"]) if result else "")
        if circuits:
            circuit = run.get("circuit") or {}
            cells.append(f"{circuit['gatesLive']:,}" if circuit else "")
            cells.append(f"{circuit['imagesPerS']:,.0f}" if circuit else "")
        marks = "  [bold green]best[/]" if run["id"] == best_id else ""
        if run.get("warnings"):
            codes = ",".join(str(w.get("code")) for w in run["warnings"])
            marks += f"  [yellow]! {escape(codes)}[/]"
        cells.append(run["id"] + marks)
        table.add_row(*cells)
    return table


def combinations_table(sweep: Sweep) -> Table:
    """One row per combination: mean ± std and n of the metric over its seeds, the mean
    kept test accuracy, runs done, runs with warnings; best mean first."""
    metric = sweep["metric"]
    lowest = sweep.get("goal") == "min"
    groups = list(sweep.get("combinations") or [])
    scored = sorted(
        (g for g in groups if g.get("mean") is not None),
        key=lambda g: g["mean"] if lowest else -g["mean"],
    )
    groups = scored + [g for g in groups if g.get("mean") is None]
    best = (sweep.get("best") or {}).get("combination")
    options = [o for o in sweep.get("varying") or [] if o != "seed"]
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("#", justify="right")
    for option in options:
        table.add_column(option)
    table.add_column(f"{metric} (mean±std)", justify="right")
    table.add_column("N", justify="right")
    if metric != "test_acc_discrete":
        table.add_column("test_acc_discrete", justify="right")
    table.add_column("WARN", justify="right")
    for group in groups:
        cells = [str(group["index"])]
        cells += [markup_safe(num((group.get("options") or {}).get(o))) for o in options]
        mean, std = group.get("mean"), group.get("std")
        text = "" if mean is None else f"{mean:.4f}" + (f"±{std:.4f}" if std is not None else "")
        cells.append(text + ("  [bold green]best[/]" if group["index"] == best else ""))
        cells.append(f"{group.get('n', 0)}/{len(group.get('jobs') or [])}")
        if metric != "test_acc_discrete":
            acc = group.get("testAccDiscrete")
            cells.append(f"{acc:.4f}" if acc is not None else "")
        cells.append(f"[yellow]{group['warnings']}[/]" if group.get("warnings") else "")
        table.add_row(*cells)
    return table


async def _follow_to_end(client: GateQueueClient, sweep: Sweep, out: Console) -> int:
    """One progress bar over the sweep's runs, fed by its job changes; then the runs."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    final = sweep
    if err.is_terminal:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[detail]}"),
            console=err,
        ) as progress:
            task = progress.add_task(
                escape(sweep.get("name") or "sweep"), total=sweep["total"], detail=""
            )
            async for update in client.watch_sweep(sweep["id"]):
                final = update
                progress.update(
                    task,
                    completed=update["total"] - update["remaining"],
                    detail=escape(_progress_text(update)),
                )
    else:  # a pipe: one line per change of the counts
        shown = None
        async for update in client.watch_sweep(sweep["id"]):
            final = update
            text = _progress_text(update)
            if text != shown:
                shown = text
                done = update["total"] - update["remaining"]
                err.print(f"{done}/{update['total']} done: {escape(text)}")
    _print_sweep(out, final)
    succeeded = (final.get("counts") or {}).get(Status.SUCCEEDED.value, 0)
    return EXIT_OK if succeeded == final["total"] else EXIT_JOB_FAILED
