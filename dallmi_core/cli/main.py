"""The `dallmi` command: headless fine-tuning, adaptation, scoring, evaluation and benchmarks.

Every command prints a one-line error (exit 2) for input the user can fix (DallmiError);
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from dallmi_core.cli.bench import add_bench_commands
from dallmi_core.cli.models import add_model_commands
from dallmi_core.cli.store import add_store_commands

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cmd_worker(args) -> None:
    from dallmi_core.app.worker import main as worker_main

    argv = ["--poll", str(args.poll)] + (["--data-dir", args.data_dir] if args.data_dir else [])
    argv += (["--idle-exit", str(args.idle_exit)] if args.idle_exit is not None else []) + (
        ["--once"] if args.once else []
    )
    code = worker_main(argv)
    if code:
        raise SystemExit(code)


def cmd_hash_password(args) -> None:
    """Print the salted scrypt hash of a password (asked twice on a terminal, else the first stdin line)."""
    import getpass

    from dallmi_core.app.auth import HASH_ENV, hash_password
    from dallmi_core.errors import ConfigError

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise ConfigError("the two passwords differ. Try again.")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    print(hash_password(password))
    print(f'Set it as {HASH_ENV}=<hash> or password_hash = "<hash>" in .streamlit/secrets.toml.', file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dallmi", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_model_commands(sub)  # finetune-source, adapt, score, evaluate
    add_bench_commands(sub)  # bench-quality, bench-speed

    p = sub.add_parser("worker", help="serve the project store's run queue (the app starts one itself)")
    p.add_argument("--data-dir", help="data directory (default: $DALLMI_DATA_DIR or ./dallmi_data)")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between queue checks")
    p.add_argument("--idle-exit", type=float, help="exit after this many idle seconds (default: never)")
    p.add_argument("--once", action="store_true", help="exit after one run")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("hash-password", help="print the salted scrypt hash for the app's optional password gate")
    p.set_defaults(func=cmd_hash_password)
    add_store_commands(sub)  # projects, import, export
    return parser


def main(argv: list[str] | None = None) -> int:
    from dallmi_core.errors import DallmiError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except DallmiError as exc:
        print(f"dallmi {args.command}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
