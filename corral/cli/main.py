"""Entry point of the `corral` command.

Every failure ends as one readable line on stderr and a non-zero exit status:
2 for a mistake in the command itself (bad arguments, unknown ids), 1 for the cluster's state
(unavailable, conflict), 70 for a Corral bug.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from corral.cli import cluster, coordination, kv, render
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

    run_demo(render.console())
    return EXIT_OK


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one readable line (and exit 2), not the whole usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"corral: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="corral",
        description="Corral: replicated key/value store, coordination recipes and durable jobs.",
    )
    parser.add_argument("--cluster", help="path to corral.toml, its folder, or a coordinator host:port")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds before a request gives up (default 10)")
    # The same two options after the command too (`corral get k --cluster X`); SUPPRESS keeps a
    # subcommand from overwriting a value given before it.
    common = _Parser(add_help=False)
    common.add_argument("--cluster", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.add_parser = functools.partial(sub.add_parser, parents=[common])  # type: ignore[method-assign]
    demo = sub.add_parser("demo", help="a short tour of what Corral can do")
    demo.set_defaults(handler=_cmd_demo)
    cluster.add_commands(sub)
    kv.add_commands(sub)
    coordination.add_commands(sub)
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
