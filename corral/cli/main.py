"""Entry point of the `corral` command.

Every failure ends as one readable line on stderr and a non-zero exit status:
2 for a mistake in the command itself (bad arguments, unknown ids), 1 for the cluster's state
(unavailable, conflict), 70 for a Corral bug.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from rich.console import Console

from corral.errors import CorralError, Internal, InvalidArgument, NotFound

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_BUG = 70  # sysexits EX_SOFTWARE

Handler = Callable[[argparse.Namespace], int]


def exit_status(err: CorralError) -> int:
    if isinstance(err, InvalidArgument | NotFound):
        return EXIT_USAGE
    if isinstance(err, Internal):
        return EXIT_BUG
    return EXIT_FAILURE


def _cmd_demo(args: argparse.Namespace) -> int:
    from corral.cli.demo import run_demo

    run_demo(Console())
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corral",
        description="Corral: replicated key/value store, coordination recipes and durable jobs.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="a short tour of what Corral can do")
    demo.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return handler(args)
    except CorralError as err:
        print(f"corral: {err.message}", file=sys.stderr)
        return exit_status(err)
    except KeyboardInterrupt:
        print("corral: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
