"""`python -m service.worker`: one worker in the foreground, with knobs the CLI does not
expose (a trainer command, timings). Tests run workers this way so SIGKILL is real."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys

from service.config import Settings, parse_gpus
from service.errors import ConfigError
from service.logconfig import configure_logging
from service.runloop import run_until_signal
from service.worker import run_worker


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m service.worker")
    p.add_argument("--mongodb-uri", help="default: $MONGODB_URI")
    p.add_argument("--gpus", help="slots: a count, device ids (0,3) or 'cpu'")
    p.add_argument("--worker-id", help="default: <host>:<slots>")
    p.add_argument("--trainer", help="trainer command line (default: python -m trainer)")
    p.add_argument("--cancel-grace-s", type=float)
    p.add_argument("--shutdown-grace-s", type=float)
    p.add_argument("--stop-grace-s", type=float)
    args = p.parse_args(argv)
    try:
        settings = Settings.from_env()
        if args.gpus:
            settings = dataclasses.replace(settings, gpus=parse_gpus(args.gpus))
    except ConfigError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 2
    if args.mongodb_uri:
        settings = dataclasses.replace(settings, mongodb_uri=args.mongodb_uri)
    configure_logging(settings.log_format, settings.log_level)
    options = {
        name: value
        for name in ("cancel_grace_s", "shutdown_grace_s", "stop_grace_s")
        if (value := getattr(args, name)) is not None
    }
    trainer_cmd = shlex.split(args.trainer) if args.trainer else None

    return run_until_signal(
        lambda: run_worker(settings, trainer_cmd=trainer_cmd, worker_id=args.worker_id, **options)
    )


if __name__ == "__main__":
    sys.exit(main())
