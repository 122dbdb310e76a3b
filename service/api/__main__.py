"""`python -m service.api [--host H] [--port P]`: the API alone, configured from the
environment like `gatequeue serve` (the benchmark starts it this way, in its own process)."""

from __future__ import annotations

import argparse
import sys

from service.api.app import serve
from service.config import DEFAULT_API_PORT, Settings
from service.logconfig import configure_logging
from service.runloop import run_until_signal


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.api")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_API_PORT)
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    if not settings.mongodb_uri:
        print("python -m service.api: set MONGODB_URI", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)

    def started(url: str) -> None:
        print(f"listening on {url}", flush=True)

    return run_until_signal(lambda: serve(settings, args.host, args.port, started=started))


if __name__ == "__main__":
    sys.exit(main())
