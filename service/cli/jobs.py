"""The client commands of `gatequeue`: submit, ls, show, logs, cancel, download.

The submit flags are generated from the request's options (trainer.options and
service.jobs.options), so an option added there is a flag here at once, with its default
and help. Every command
talks to the API through `GateQueueClient` and answers with an exit status scripts can use:

    0  done (for `submit --wait` and `logs -f`: the job Succeeded)
    1  the job finished but did not succeed (Failed or Cancelled)
    2  the API refused the request (invalid values, unknown job, bad token, ...)
    3  the API could not be reached
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from service.cli.common import (
    EXIT_JOB_FAILED,
    EXIT_OK,
    EXIT_REFUSED,
    METRIC_ORDER,
    STATUS_STYLE,
    api_parent,
    client_command,
    duration,
    escape,
    num,
    status_markup,
    warning_lines,
)
from service.cli.terminal import markup_safe, printable
from service.client import (
    GateQueueClient,
    GateQueueError,
    Job,
)
from service.config import Settings
from service.jobs.request import REQUEST_OPTIONS
from service.jobs.status import Status
from trainer.flags import add_option_flag, given
from trainer.presets import PRESETS


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    api = api_parent()

    submit = subparsers.add_parser(
        "submit",
        parents=[api],
        help="submit a training run",
        description="Submit a training run. Omitted flags take the API's defaults.",
    )
    submit.add_argument(
        "--wait",
        action="store_true",
        help="follow the job to its end with a progress bar; exit 0 only if it Succeeded",
    )
    submit.add_argument("--idempotency-key", help="retrying with the same key returns the same job")
    submit.add_argument(
        "--preset",
        choices=list(PRESETS),
        help="a named conv configuration (python -m trainer.presets lists them); the "
        "flags given beside it win",
    )
    hp = submit.add_argument_group("job request (flags mirror the JSON fields)")
    for option in REQUEST_OPTIONS:  # omitted flags are left out: the API's defaults apply
        add_option_flag(hp, option, request=True, required=option.request_required)
    submit.set_defaults(func=client_command(cmd_submit))

    ls = subparsers.add_parser("ls", parents=[api], help="list jobs, newest first")
    ls.add_argument("--status", choices=tuple(STATUS_STYLE), help="only jobs with this status")
    ls.add_argument("--limit", type=int, default=20, help="how many (default %(default)s)")
    ls.add_argument("--json", action="store_true", help="one JSON document per line")
    ls.add_argument("--mine", action="store_true", help="only the jobs this token submitted")
    ls.add_argument("--sweep", metavar="SWEEP", help="only the jobs of this sweep")
    ls.set_defaults(func=client_command(cmd_ls))

    show = subparsers.add_parser("show", parents=[api], help="one job with its metrics")
    show.add_argument("job", metavar="JOB", help="job id")
    show.add_argument("--json", action="store_true", help="the job and metrics as JSON")
    show.set_defaults(func=client_command(cmd_show))

    logs = subparsers.add_parser("logs", parents=[api], help="print (or follow) a job's log")
    logs.add_argument("job", metavar="JOB", help="job id")
    logs.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing live lines until the job ends; exit 0 only if it Succeeded",
    )
    logs.add_argument(
        "--from", dest="from_seq", type=int, default=0, metavar="N", help="start at line N"
    )
    logs.set_defaults(func=client_command(cmd_logs))

    cancel = subparsers.add_parser("cancel", parents=[api], help="cancel a job")
    cancel.add_argument("job", metavar="JOB", help="job id")
    cancel.set_defaults(func=client_command(cmd_cancel))

    download = subparsers.add_parser(
        "download", parents=[api], help="save the files of a finished run (the trained network)"
    )
    download.add_argument("job", metavar="JOB", help="job id")
    download.add_argument(
        "names", metavar="NAME", nargs="*",
        help="artifact names (default: all of them), or `checkpoint` for the latest checkpoint",
    )  # fmt: skip
    download.add_argument(
        "-o", "--output-dir", default=".", metavar="DIR", help="where to save (default: .)"
    )
    download.set_defaults(func=client_command(cmd_download))


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    """The POST /jobs body: only the fields given on the command line, over the preset's."""
    preset = getattr(args, "preset", None)
    return {**(PRESETS[preset].options if preset else {}), **given(args, REQUEST_OPTIONS)}


def _metrics_text(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return ""
    keys = [k for k in METRIC_ORDER if k in metrics]
    keys += [k for k in metrics if k not in keys and k not in ("epoch", "epochs")]
    return "  ".join(f"{k}={num(metrics[k])}" for k in keys)


def result_text(result: dict[str, Any]) -> str:
    """The kept network's numbers (docs/trainer.md, "Validation and the kept network")."""
    val = result.get("val_acc_discrete")
    return (
        f"kept epoch {result.get('epoch')}: "
        + (f"val_acc_discrete={num(val)}  " if val is not None else "")
        + f"test_acc_discrete={num(result.get('test_acc_discrete'))}  "
        f"test_acc={num(result.get('test_acc'))}  "
        f"discretization_gap={num(result.get('discretization_gap'))}"
    )


def _headline(job: Job) -> str:
    """What the bar shows of a run's accuracy: the validation one where there is one."""
    metrics = job.get("latestMetrics") or {}
    for key, label in (("val_acc_discrete", "val"), ("test_acc_discrete", "test")):
        if isinstance(metrics.get(key), int | float):
            return f"{label} {metrics[key]:.4f}"
    return ""


def _eta(job: Job) -> str:
    eta = job.get("etaS") if job.get("status") == Status.RUNNING else None
    return f"eta {duration(eta)}" if eta is not None else ""


def _epochs(job: Job) -> tuple[int, int]:
    metrics = job.get("latestMetrics") or {}
    total = metrics.get("epochs") or (job.get("hyperparameters") or {}).get("epochs") or 1
    done = metrics.get("epoch") or 0
    return int(done), int(total)


# -- commands ---------------------------------------------------------------------------


async def cmd_submit(args: argparse.Namespace, settings: Settings, client: GateQueueClient) -> int:
    """Submit; print the job id (stdout) so scripts can capture it."""
    job = await client.submit(idempotency_key=args.idempotency_key, **request_body(args))
    out = Console(highlight=False, soft_wrap=True)
    if not args.wait:
        print(job["id"])
        return EXIT_OK
    out.print(f"submitted {job['id']}  {_page_url(args.api, job['id'])}")
    final = await follow_progress(client, job)
    status = final.get("status")
    line = f"job {final['id']} {status_markup(status)}"
    if final.get("exitCode") is not None:
        line += f" (exit {final['exitCode']})"
    out.print(line)
    if final.get("result"):
        out.print("  " + result_text(final["result"]))
    elif final.get("latestMetrics"):
        out.print("  " + _metrics_text(final["latestMetrics"]))
    for warning in warning_lines(final):
        out.print("  " + warning)
    if final.get("error"):
        out.print(f"  error: {escape(str(final['error']))}")
    return EXIT_OK if status == Status.SUCCEEDED else EXIT_JOB_FAILED


def _page_url(api: str, job_id: str) -> str:
    return f"{api.rstrip('/')}/#/jobs/{job_id}"


async def follow_progress(client: GateQueueClient, job: Job) -> Job:
    """A progress bar over epochs, fed by /ws/jobs pushes (no polling); the final job.

    One short line, so the bar stays visible at 80 columns: status, bar, epoch, percent,
    elapsed, ETA and the headline accuracy (the metrics in full are in `gatequeue show`)."""
    done, total = _epochs(job)
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    if not console.is_terminal:
        return await _follow_plain(client, job, console)
    with Progress(
        TextColumn("{task.fields[status]}"),
        BarColumn(bar_width=20),
        TextColumn("epoch {task.completed:.0f}/{task.total:.0f}"),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[eta]}"),
        TextColumn(
            "{task.fields[metrics]}", table_column=Column(no_wrap=True, overflow="ellipsis")
        ),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(
            "train",
            total=total,
            completed=done,
            status=status_markup(job.get("status")),
            eta=_eta(job),
            metrics="",
        )
        final = job
        async for update in client.watch(job["id"]):
            final = update
            done, total = _epochs(update)
            progress.update(
                task,
                total=total,
                completed=done,
                status=status_markup(update.get("status")),
                eta=_eta(update),
                metrics=_headline(update),
            )
    return final


async def _follow_plain(client: GateQueueClient, job: Job, console: Console) -> Job:
    """Where no bar can be drawn (a pipe, a CI log): one line per status or epoch change."""
    final, shown = job, None
    async for update in client.watch(job["id"]):
        final = update
        done, total = _epochs(update)
        key = (update.get("status"), done)
        if key != shown:
            shown = key
            metrics = escape(_metrics_text(update.get("latestMetrics")))
            eta = _eta(update)
            eta = f"{eta}  " if eta else ""
            console.print(f"{update.get('status')}  epoch {done}/{total}  {eta}{metrics}".rstrip())
    return final


async def cmd_ls(args: argparse.Namespace, settings: Settings, client: GateQueueClient) -> int:
    mine = None
    if args.mine:
        me = await client.whoami()
        if me.get("open"):
            Console(stderr=True).print("gatequeue: this API has no tokens: every job is yours")
        elif not me.get("authenticated"):
            raise GateQueueError("--mine needs a token: pass --token or set $GATEQUEUE_API_TOKEN")
        mine = me.get("name")
    jobs = await client.list(
        status=args.status, limit=args.limit, submitted_by=mine, sweep=args.sweep
    )
    if args.json:
        for job in jobs:
            print(json.dumps(job))
        return EXIT_OK
    # Piped output is not cut to 80 columns: ids must survive `| grep` and `| awk`.
    console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 250)
    if not jobs:
        console.print("no jobs" + (f" with status {args.status}" if args.status else ""))
        return EXIT_OK
    table = Table(box=None, pad_edge=False, header_style="bold")
    # The headline is the discrete network's accuracy: that network is what a run saves.
    for col in ("ID", "STATUS", "NAME", "BY", "OPTIMIZER", "EPOCH", "ACC", "ETA", "CREATED"):
        if col == "NAME":
            table.add_column(col, overflow="ellipsis", max_width=40)
        else:
            table.add_column(col, no_wrap=True, min_width=24 if col == "ID" else None)
    for job in jobs:
        done, total = _epochs(job)
        metrics = job.get("latestMetrics") or {}
        acc = (job.get("result") or metrics).get("test_acc_discrete")
        mark = " [yellow]![/]" if job.get("warnings") else ""
        table.add_row(
            job["id"],
            status_markup(job.get("status")),
            markup_safe(job.get("name") or ""),
            markup_safe(job.get("submittedBy") or ""),
            (job.get("hyperparameters") or {}).get("gateOptimizer", ""),
            f"{done}/{total}",
            (f"{acc:.4f}" if isinstance(acc, int | float) else "") + mark,
            _eta(job).removeprefix("eta "),
            (job.get("createdAt") or "")[:19].replace("T", " "),
        )
    console.print(table)
    if jobs.next:
        console.print(f"[dim]more: gatequeue ls --limit {args.limit * 2}[/]")
    console.print(
        "[dim]ACC: test accuracy of the kept discrete network (test_acc_discrete); "
        "! : the run has warnings (gatequeue show)[/]"
    )
    return EXIT_OK


async def cmd_show(args: argparse.Namespace, settings: Settings, client: GateQueueClient) -> int:
    job = await client.get(args.job)
    metrics = await client.metrics(args.job)
    if args.json:
        print(json.dumps({"job": job, "metrics": metrics}, indent=2))
        return EXIT_OK
    console = Console(highlight=False, soft_wrap=True)
    name = markup_safe(job.get("name") or "")
    console.print(f"[bold]{job['id']}[/]  {status_markup(job.get('status'))}  {name}")
    rows: list[tuple[str, str]] = [
        ("created", job.get("createdAt") or ""),
        ("started", job.get("startedAt") or ""),
        ("finished", job.get("finishedAt") or ""),
        ("attempt", f"{job.get('attempt')}/{job.get('maxAttempts')}"),
        ("submitted by", markup_safe(job.get("submittedBy") or "")),
    ]
    if job.get("status") == Status.PENDING and job.get("queuePosition") is not None:
        ahead = job["queuePosition"]
        rows.append(("queue", f"{ahead} job{'s' if ahead != 1 else ''} ahead; waiting for "
                              f"{job.get('waitingFor') or 'a free slot'}"))  # fmt: skip
    rows.append(("priority", str(job.get("priority", 0))))
    if job.get("sweepId"):
        rows.append(("sweep", f"{job['sweepId']} (run {job.get('sweepIndex')})"))
    estimate = job.get("memoryEstimate")
    if estimate:
        rows.append(("memory", f"{_bytes(estimate['cpu'])} on CPU, {_bytes(estimate['cuda'])} "
                               "on a GPU (estimated peak)"))  # fmt: skip
    worker = job.get("worker")
    if worker:
        rows.append(("worker", f"{worker.get('id')} on {worker.get('host')} ({worker.get('gpu')})"))
    if job.get("exitCode") is not None:
        rows.append(("exit code", str(job["exitCode"])))
    if job.get("cancelRequested") and job.get("status") == Status.RUNNING:
        rows.append(("cancel", "requested"))
    if job.get("error"):
        rows.append(("error", escape(str(job["error"]))))
    if job.get("status") == Status.RUNNING and job.get("etaS") is not None:
        rows.append(("eta", f"{duration(job['etaS'])} (estimated)"))
    if job.get("result"):
        rows.append(("result", result_text(job["result"])))
    for warning in warning_lines(job):
        rows.append(("warning", warning))
    resumed = job.get("resumedFrom")
    if resumed:
        rows.append(("resumed from", f"epoch {resumed['epoch']} (checkpoint of attempt "
                                     f"{resumed['attemptId'][:8]})"))  # fmt: skip
    checkpoint = job.get("checkpoint")
    if checkpoint:
        written = checkpoint["createdAt"][:19].replace("T", " ")
        size = _bytes(checkpoint["length"])
        rows.append(("checkpoint", f"epoch {checkpoint['epoch']}, {size}, {written}"))
    circuit = job.get("circuit")
    if circuit:
        rows.append(("circuit", _circuit_text(circuit)))
    artifacts = job.get("artifacts") or []
    if artifacts:
        rows.append(("artifacts", " ".join(f"{a['name']} ({a['length']} B)" for a in artifacts)))
    hp = job.get("hyperparameters") or {}
    rows.append(("hyperparameters", markup_safe(" ".join(f"{k}={v}" for k, v in hp.items()))))
    for key, value in rows:
        if value:
            console.print(f"  [dim]{key:<16}[/]{value}")
    if metrics:
        keys = [k for k in METRIC_ORDER if any(k in m for m in metrics)]
        keys += sorted({k for m in metrics for k in m} - {*keys, "epoch", "epochs", "ts"})
        table = Table(box=None, header_style="bold", pad_edge=False)
        table.add_column("EPOCH")
        for k in keys:
            table.add_column(k, justify="right")
        for m in metrics:
            table.add_row(f"{m.get('epoch')}/{m.get('epochs')}", *(num(m.get(k, "")) for k in keys))
        console.print()
        console.print(table)
    return EXIT_OK


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover


def _circuit_text(circuit: dict[str, Any]) -> str:
    verified = (
        "[green]verified[/]"
        if circuit.get("verified")
        else f"[red]NOT verified: {circuit.get('disagreements')} disagreements[/]"
    )
    return (
        f"{circuit['gates']} gates, {circuit['gatesLive']} live, depth {circuit['depth']}, "
        f"{circuit['imagesPerS']:,.0f} images/s (1 thread), {verified}"
    )


async def cmd_logs(args: argparse.Namespace, settings: Settings, client: GateQueueClient) -> int:
    # One stream, in the log's order (stderr and system lines marked), like `kubectl logs`:
    # splitting them over stdout and stderr would reorder them in any pipe.
    out, err = sys.stdout, sys.stderr
    tty = out.isatty()
    marks = {
        "stderr": "\x1b[31m" if tty else "",
        "system": "\x1b[2m[system] " if tty else "[system] ",
    }
    reset = "\x1b[0m" if tty else ""
    async with client.logs(args.job, follow=args.follow, from_seq=args.from_seq) as stream:
        async for line in stream:
            mark = marks.get(line.stream)
            # A terminal gets the trainer's text escaped; a pipe gets it as it was written.
            text = printable(line.line) if tty else line.line
            if mark is None:
                out.write(text + "\n")
            else:
                out.write(f"{mark}{text}{reset}\n")
            if args.follow and not stream.pending():
                out.flush()
        out.flush()
    if not args.follow:
        return EXIT_OK
    end = stream.end
    if end is None:
        return EXIT_OK
    exit_info = f" (exit {end.exit_code})" if end.exit_code is not None else ""
    err.write(f"job {end.status}{exit_info}\n")
    return EXIT_OK if end.status == Status.SUCCEEDED else EXIT_JOB_FAILED


async def cmd_cancel(args: argparse.Namespace, settings: Settings, client: GateQueueClient) -> int:
    job = await client.cancel(args.job)
    console = Console(highlight=False, soft_wrap=True)
    if job.get("status") == Status.CANCELLED:
        console.print(f"{job['id']} {status_markup(Status.CANCELLED)}")
    else:
        console.print(
            f"{job['id']} {status_markup(job.get('status'))}: cancel requested; its worker stops it"
        )
    return EXIT_OK


async def cmd_download(
    args: argparse.Namespace, settings: Settings, client: GateQueueClient
) -> int:
    """Each file keeps its path under the output dir (network.json, ...); prints the paths."""
    if args.names == ["checkpoint"]:
        out_dir = Path(args.output_dir)
        await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
        print(await client.download_checkpoint(args.job, out_dir))
        return EXIT_OK
    job = await client.get(args.job)
    available = [a["name"] for a in job.get("artifacts") or []]
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    if not available:
        err.print(f"gatequeue: job {job['id']} ({job.get('status')}) has no artifacts yet")
        return EXIT_REFUSED
    unknown = [n for n in args.names if n not in available]
    if unknown:
        err.print(
            f"gatequeue: job {job['id']} has no artifact {', '.join(map(repr, unknown))}; "
            f"it has {', '.join(available)}"
        )
        return EXIT_REFUSED
    out_dir = Path(args.output_dir)
    for name in args.names or available:
        dest = out_dir / name
        await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
        print(await client.download(job["id"], name, dest))
    return EXIT_OK
