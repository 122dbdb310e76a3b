"""PyMongo's own async test suite against the embedded MongoDB-compatible server.

Downloads the sdist of the installed PyMongo version (`pip download`, cached under
~/.cache/gatequeue/pymongo-suite/), makes a throwaway virtual environment with the suite's
pytest plugins and the same PyMongo (~/.cache/gatequeue/pymongo-suite-venv; never gatequeue's
own venv), starts the embedded server and runs the suite's files against it, found through the
variables PyMongo's tests read (DB_IP, DB_PORT). Prints passed / failed / errors / skipped per
file and in total, the pass rate of the tests that ran (not skipped), and the machine.

Not part of CI: it downloads. Figures go in docs/embedded-mongo.md.

    python bench/pymongo_suite.py                       # the default files, ~5 min
    python bench/pymongo_suite.py --files test_change_stream.py -k Unified
    python bench/pymongo_suite.py --failures 40         # and list the first 40 failures
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import venv
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import structlog  # noqa: E402

from service.embedded_mongo import EmbeddedMongo  # noqa: E402

# The report is stdout; the server's start and stop lines go to stderr.
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gatequeue"
VENV = CACHE / "pymongo-suite-venv"
# What the suite needs besides PyMongo itself (its requirements/test.txt).
PLUGINS = ("pytest>=8.2", "pytest-asyncio>=0.24.0", "importlib_metadata>=7.0")
# And ours: a test that hangs (a server that never answers) fails after this long instead of
# stopping the run.
TIMEOUT_PLUGIN = "pytest-timeout>=2.3"
TEST_TIMEOUT_S = 60

# The brief's set: change streams (with the change-stream unified spec tests, which
# test_change_stream.py generates), retryable writes, the CRUD unified spec tests; and the
# retryable-writes unified spec tests, the spec side of what gatequeue relies on.
DEFAULT_FILES = (
    "test_change_stream.py",
    "test_retryable_writes.py",
    "test_crud_unified.py",
    "test_retryable_writes_unified.py",
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def pymongo_version() -> str:
    return importlib.metadata.version("pymongo")


def fetch_suite(version: str) -> Path:
    """The sdist's test/ and pyproject.toml (its pytest settings), unpacked once per version."""
    root = CACHE / "pymongo-suite" / version
    suite = root / "suite"
    if (suite / "test" / "asynchronous").is_dir():
        return suite
    root.mkdir(parents=True, exist_ok=True)
    sdist = root / f"pymongo-{version}.tar.gz"
    if not sdist.is_file():
        log(f"downloading the sdist of pymongo {version}")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:",
             "--no-deps", f"pymongo=={version}", "-d", str(root)],
            check=True,
        )  # fmt: skip
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        (top,) = Path(tmp).iterdir()
        staged = Path(tmp) / "suite"
        staged.mkdir()
        # Only the tests and their settings: the installed PyMongo (with its C extensions) is
        # what runs, not the sdist's sources.
        shutil.copytree(top / "test", staged / "test")
        shutil.copy2(top / "pyproject.toml", staged / "pyproject.toml")
        os.replace(staged, suite)
    return suite


def suite_venv(version: str) -> Path:
    """A venv of the base interpreter (not ours) with the plugins and the same PyMongo."""
    python = VENV / "bin" / "python"
    wanted = json.dumps(
        {"pymongo": version, "plugins": [*PLUGINS, TIMEOUT_PLUGIN], "python": sys.version}
    )
    marker = VENV / ".gatequeue-suite"
    if python.is_file() and marker.is_file() and marker.read_text() == wanted:
        return python
    log(f"creating {VENV}")
    shutil.rmtree(VENV, ignore_errors=True)
    venv.EnvBuilder(with_pip=True, clear=True, symlinks=True).create(VENV)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         f"pymongo=={version}", *PLUGINS, TIMEOUT_PLUGIN],
        check=True,
    )  # fmt: skip
    marker.write_text(wanted)
    return python


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f"{pages / 2**30:.0f} GiB"
    except (ValueError, OSError):
        memory = "?"
    java = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False)
    java_line = (java.stderr.splitlines() or ["?"])[0]
    return (
        f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} cores, {memory}; "
        f"Python {platform.python_version()}; {java_line}"
    )


def outcome(case: ET.Element) -> str:
    for child in case:
        if child.tag in ("failure", "error", "skipped"):
            return {"failure": "failed", "error": "errors", "skipped": "skipped"}[child.tag]
    return "passed"


def summarise(xml_path: Path, files: list[str]) -> tuple[dict[str, Counter], list[tuple]]:
    per_file: dict[str, Counter] = {name: Counter() for name in files}
    problems: list[tuple] = []
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        classname = case.get("classname", "")
        module = classname.split(".")[2] + ".py" if classname.count(".") >= 2 else classname
        result = outcome(case)
        per_file.setdefault(module, Counter())[result] += 1
        if result in ("failed", "errors"):
            detail = next(iter(c for c in case if c.tag in ("failure", "error")))
            message = (detail.get("message") or detail.text or "").strip().splitlines()
            problems.append((module, classname.split(".")[-1], case.get("name"), result,
                             message[0][:300] if message else ""))  # fmt: skip
    return per_file, problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", nargs="+", default=list(DEFAULT_FILES),
                        help="files under test/asynchronous/ (default: %(default)s)")  # fmt: skip
    parser.add_argument("-k", default=None, help="pytest -k expression")
    parser.add_argument("--failures", type=int, default=0, help="list this many failures")
    parser.add_argument("--timeout", type=float, default=3600.0, help="pytest wall limit (s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="pytest -v in the log")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    version = pymongo_version()
    suite = fetch_suite(version)
    python = suite_venv(version)
    # Some of the suite's tests connect to localhost:27017 whatever DB_PORT says: serve there
    # when the port is free.
    mongo = EmbeddedMongo(port=27017 if port_free(27017) else 0)
    uri = mongo.start()
    port = uri.split(":")[2].split("/")[0]
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            junit = Path(tmp) / "results.xml"
            # --tb=native: pytest's own traceback formatting re-parses sources with ast, which
            # CPython 3.11 breaks on deep stacks ("AST constructor recursion depth mismatch").
            command = [str(python), "-m", "pytest", "-p", "no:cacheprovider", "--no-header",
                       "-v" if args.verbose else "-q", "--tb=native", "-o", "log_cli=false",
                       f"--junitxml={junit}", "-rN", f"--timeout={TEST_TIMEOUT_S}"]  # fmt: skip
            if args.k:
                command += ["-k", args.k]
            command += [f"test/asynchronous/{name}" for name in args.files]
            env = {
                "PATH": os.environ.get("PATH", ""),
                "HOME": os.environ.get("HOME", ""),
                "DB_IP": "127.0.0.1",
                "DB_PORT": port,
                "PYTHONDONTWRITEBYTECODE": "1",
            }
            log(f"pymongo {version} suite against {uri}: {' '.join(args.files)}")
            output = CACHE / "pymongo-suite" / version / "last-run.log"
            log(f"pytest's output: {output}")
            with open(output, "w") as out:
                try:
                    subprocess.run(command, cwd=suite, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, timeout=args.timeout,
                                   check=False)  # fmt: skip
                except subprocess.TimeoutExpired:
                    log(f"pytest ran past {args.timeout:.0f} s")
                    return 2
            if not junit.is_file():
                log(output.read_text()[-5000:])
                return 2
            per_file, problems = summarise(junit, args.files)
    finally:
        mongo.stop()
    elapsed = time.monotonic() - started

    total: Counter = Counter()
    print(f"PyMongo {version} async suite against the gatequeue embedded server")
    print(f"machine: {machine()}")
    print(f"{'file':40} {'passed':>7} {'failed':>7} {'errors':>7} {'skipped':>8} {'pass %':>7}")
    figures = {}
    for name, counts in per_file.items():
        total.update(counts)
        ran = counts["passed"] + counts["failed"] + counts["errors"]
        rate = 100.0 * counts["passed"] / ran if ran else 0.0
        figures[name] = {**counts, "pass_rate": round(rate, 1)}
        print(f"{name:40} {counts['passed']:7} {counts['failed']:7} {counts['errors']:7} "
              f"{counts['skipped']:8} {rate:6.1f}%")  # fmt: skip
    ran = total["passed"] + total["failed"] + total["errors"]
    rate = 100.0 * total["passed"] / ran if ran else 0.0
    print(f"{'total':40} {total['passed']:7} {total['failed']:7} {total['errors']:7} "
          f"{total['skipped']:8} {rate:6.1f}%")  # fmt: skip
    print(f"pass rate of the tests that ran (not skipped): {rate:.1f}%  ({elapsed:.0f} s)")
    for problem in problems[: args.failures]:
        print(" | ".join(str(p) for p in problem))
    if args.json:
        figures["total"] = {**total, "pass_rate": round(rate, 1)}
        args.json.write_text(
            json.dumps(
                {
                    "pymongo": version,
                    "machine": machine(),
                    "seconds": round(elapsed),
                    "files": figures,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
