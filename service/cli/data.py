"""`gatequeue data add|ls|show|download|rm`: registered data sets (docs/datasets.md).

`data add FILE --name N` streams an `.npz` or a CSV to `POST /datasets` with a progress
bar; `data add mnist --from DIR` reads the four MNIST IDX files of DIR (gzipped or not),
makes an npz of them and registers it as `mnist`, which a `dataset: mnist` job then trains
on without any download: the offline answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from service.cli.common import EXIT_OK, EXIT_REFUSED, api_parent, client_command, escape
from service.cli.terminal import markup_safe
from service.client import GateQueueClient, GateQueueError
from service.config import Settings

_ID = re.compile(r"[0-9a-fA-F]{24}")


def add_commands(subparsers: Any) -> None:
    api = api_parent()
    data = subparsers.add_parser("data", help="registered data sets: add, ls, show, rm")
    sub = data.add_subparsers(metavar="ACTION")

    add = sub.add_parser(
        "add", parents=[api], help="register an .npz or CSV (or `mnist --from DIR`)",
        description="Upload a data set; it is validated and encoded to bits by the API "
        "(docs/datasets.md).",
    )  # fmt: skip
    add.add_argument("file", metavar="FILE", help="an .npz or a CSV; or `mnist` with --from")
    add.add_argument("--name", help="the data set's name (a taken one gets a new version)")
    add.add_argument("--from", dest="from_dir", metavar="DIR",
                     help="with FILE `mnist`: the folder of the four MNIST IDX files")  # fmt: skip
    add.add_argument("--label-column", metavar="C", help="CSV: the label column (default label)")
    add.add_argument("--bits", type=int, metavar="K", help="thermometer thresholds (default 8)")
    add.add_argument("--thresholds", choices=("quantile", "uniform"),
                     help="where thresholds lie (default quantile)")  # fmt: skip
    add.add_argument("--categorical", metavar="A,B", default="",
                     help="CSV: columns to one-hot encode even if numeric")  # fmt: skip
    add.add_argument("--split-seed", type=int, metavar="S",
                     help="seed of the test split made when the file has none")  # fmt: skip
    add.set_defaults(func=client_command(cmd_add))

    ls = sub.add_parser("ls", parents=[api], help="registered data sets, then the built-ins")
    ls.add_argument("--name", help="only this name's versions")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(func=client_command(cmd_ls))

    show = sub.add_parser("show", parents=[api], help="one data set's record")
    show.add_argument("dataset", metavar="NAME[@VERSION]|ID")
    show.set_defaults(func=client_command(cmd_show))

    download = sub.add_parser("download", parents=[api], help="save a data set's file")
    download.add_argument("dataset", metavar="NAME[@VERSION]|ID")
    download.add_argument("-o", "--output-dir", default=".", metavar="DIR")
    download.add_argument(
        "--encoded", action="store_true",
        help="the encoded file (for --dataset-file of python -m trainer.evaluate and "
        "python -m trainer.circuit verify) instead of the upload",
    )  # fmt: skip
    download.set_defaults(func=client_command(cmd_download))

    rm = sub.add_parser("rm", parents=[api], help="delete a data set (one version)")
    rm.add_argument("dataset", metavar="NAME@VERSION|ID")
    rm.set_defaults(func=client_command(cmd_rm))


async def _find(client: GateQueueClient, spec: str, *, exact: bool = False) -> dict[str, Any]:
    """A data set by id, `name@version`, or `name` (its latest; with `exact`, only when it
    has one version)."""
    if _ID.fullmatch(spec):
        return await client.dataset(spec)
    name, _, version = spec.partition("@")
    found = [d for d in await client.datasets(name) if not d.get("builtin")]
    if version:
        found = [d for d in found if str(d["version"]) == version]
    if not found:
        raise GateQueueError(f"no registered data set {spec!r}", code="dataset_not_found")
    if exact and not version and len(found) > 1:
        versions = ", ".join(f"{name}@{d['version']}" for d in found)
        raise GateQueueError(f"{name} has several versions ({versions}): name one")
    return max(found, key=lambda d: int(d["version"]))


def _mnist_npz(folder: Path, target: Path) -> None:
    """The four IDX files of `folder` as one npz (x_* as (n, 28, 28) uint8: an image, so a
    conv network can read it)."""
    import numpy as np

    from trainer.data.errors import DataError
    from trainer.data.idx import read_idx
    from trainer.data.mnist import FILES, find_file

    arrays = {}
    for key, name in FILES.items():
        path = find_file(folder, name)
        if path is None:
            raise DataError(f"{folder} has no {name} (or {name}.gz)")
        arrays[key] = read_idx(path)
    with open(target, "wb") as fh:
        np.savez(
            fh,
            x_train=arrays["train_images"],
            y_train=arrays["train_labels"],
            x_test=arrays["test_images"],
            y_test=arrays["test_labels"],
        )


async def cmd_add(args: argparse.Namespace, settings: Settings, client: GateQueueClient) -> int:
    err = Console(stderr=True, highlight=False)
    options: dict[str, Any] = {
        "label_column": args.label_column, "bits": args.bits, "thresholds": args.thresholds,
        "categorical": [c for c in args.categorical.split(",") if c],
        "split_seed": args.split_seed,
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="gatequeue-data-") as tmp:
        if args.from_dir is not None:
            if args.file != "mnist":
                err.print("gatequeue: --from reads MNIST's IDX files: `data add mnist --from DIR`")
                return EXIT_REFUSED
            from trainer.data.errors import DataError

            path = Path(tmp) / "mnist.npz"
            try:
                await asyncio.to_thread(_mnist_npz, Path(args.from_dir), path)
            except DataError as exc:
                err.print(f"[red]gatequeue:[/] {escape(str(exc))}")
                return EXIT_REFUSED
            name = args.name or "mnist"
            # MNIST as the built-in encodes it: one bit per pixel, at the middle of its range.
            options["bits"] = options["bits"] or 1
            options["thresholds"] = options["thresholds"] or "uniform"
        else:
            path = Path(args.file)
            if not path.is_file():
                err.print(f"gatequeue: no file {escape(str(path))}")
                return EXIT_REFUSED
            name = args.name or re.sub(r"[^A-Za-z0-9._-]", "-", path.stem).lstrip("._-")
        record = await _upload(client, path, name, options)
    verb = "registered" if record.pop("status") == 201 else "already registered as"
    shape = record["shape"]
    valid = f" / {shape['valid']} valid" if shape.get("valid") else ""
    image = shape.get("image")
    layout = f"; an image of {_hwc(image)}" if image else ""
    print(
        f"{verb} {record['name']}@{record['version']} ({record['id']}): {record['classes']} "
        f"classes, {shape['inputs']} input bits, {shape['train']} train / {shape['test']} test"
        f"{valid}{layout}"
    )
    return EXIT_OK


def _hwc(image: dict[str, int]) -> str:
    """height x width x channels: what a conv run reads (docs/datasets.md, "Images")."""
    return f"{image['height']}x{image['width']}x{image['channels']}"


async def _upload(
    client: GateQueueClient, path: Path, name: str, options: dict[str, Any]
) -> dict[str, Any]:
    if not sys.stderr.isatty():
        return await client.upload_dataset(path, name=name, **options)
    with Progress(
        TextColumn(f"uploading {markup_safe(path.name)}"), BarColumn(), DownloadColumn(),
        TransferSpeedColumn(), console=Console(stderr=True), transient=True,
    ) as progress:  # fmt: skip
        task = progress.add_task("upload", total=None)
        return await client.upload_dataset(
            path, name=name, **options,
            progress=lambda sent, total: progress.update(task, completed=sent, total=total),
        )  # fmt: skip


async def cmd_ls(args: argparse.Namespace, settings: Settings, client: GateQueueClient) -> int:
    found = await client.datasets(args.name)
    if args.json:
        for d in found:
            print(json.dumps(d))
        return EXIT_OK
    console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 250)
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("NAME", "VERSION", "ID", "CLASSES", "INPUTS", "TRAIN", "TEST", "BY", "CREATED"):
        table.add_column(col, no_wrap=True)
    for d in found:
        shape = d.get("shape") or {}
        table.add_row(
            markup_safe(d["name"]),
            "built-in" if d.get("builtin") else str(d["version"]),
            d.get("id", ""),
            str(d["classes"]),
            str(shape.get("inputs", ""))
            + (f" ({_hwc(shape['image'])})" if shape.get("image") else ""),
            str(shape.get("train", "")),
            str(shape.get("test", "")),
            markup_safe(d.get("createdBy") or ""),
            (d.get("createdAt") or "")[:19].replace("T", " "),
        )
    console.print(table)
    return EXIT_OK


async def cmd_show(args: argparse.Namespace, settings: Settings, client: GateQueueClient) -> int:
    print(json.dumps(await _find(client, args.dataset), indent=2))
    return EXIT_OK


async def cmd_download(
    args: argparse.Namespace, settings: Settings, client: GateQueueClient
) -> int:
    record = await _find(client, args.dataset)
    path = await client.download_dataset(record["id"], Path(args.output_dir), encoded=args.encoded)
    print(path)
    return EXIT_OK


async def cmd_rm(args: argparse.Namespace, settings: Settings, client: GateQueueClient) -> int:
    record = await _find(client, args.dataset, exact=True)
    await client.delete_dataset(record["id"])
    print(f"deleted {record['name']}@{record['version']} ({record['id']})")
    return EXIT_OK
