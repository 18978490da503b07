"""`corral put | get | del | range | txn | compact | failpoint`: the key/value store from the shell.

Transactions: `corral txn --if 'KEY TARGET OP OPERAND' ... --then 'put KEY VALUE' --then 'del KEY'
--else ...`, where TARGET is value|version|create_revision|mod_revision|lease and OP is == != < >.
Quote arguments with spaces, shell-style, inside each clause.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from corral.client.sync import Client
from corral.errors import InvalidArgument, NotFound
from corral.model import Compare, CompareTarget, Delete, KeyValue, Put, Write


def _client(args: argparse.Namespace) -> Client:
    return Client(args.cluster, timeout=args.timeout)


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="backslashreplace")


def _kv_json(kv: KeyValue) -> dict[str, object]:
    return {
        "key": kv.key,
        "value": _text(kv.value),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
        "lease": kv.lease,
    }


def _value_arg(value: str) -> bytes:
    return sys.stdin.buffer.read() if value == "-" else value.encode("utf-8")


def cmd_put(args: argparse.Namespace) -> int:
    with _client(args) as client:
        print(client.put(args.key, _value_arg(args.value), lease=args.lease))
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    with _client(args) as client:
        kv = client.get(args.key, revision=args.rev, serializable=args.serializable)
    if kv is None:
        at = f" at revision {args.rev}" if args.rev else ""
        raise NotFound(f"key {args.key!r} not found{at}")
    if args.json:
        print(json.dumps(_kv_json(kv)))
    else:
        sys.stdout.buffer.write(kv.value + (b"" if kv.value.endswith(b"\n") else b"\n"))
    return 0


def cmd_del(args: argparse.Namespace) -> int:
    with _client(args) as client:
        print(client.delete(args.key))
    return 0


def cmd_range(args: argparse.Namespace) -> int:
    with _client(args) as client:
        kvs = client.range(args.prefix, revision=args.rev, limit=args.limit, serializable=args.serializable)
    if args.json:
        print(json.dumps([_kv_json(kv) for kv in kvs]))
    else:
        for kv in kvs:
            print(f"{kv.key}\t{_text(kv.value)}")
    return 0


def parse_compare(clause: str) -> Compare:
    """`KEY TARGET OP OPERAND`, e.g. `counter value == 1` or `/lock version > 0`."""
    parts = shlex.split(clause)
    if len(parts) != 4:
        raise InvalidArgument(f"--if {clause!r}: expected KEY TARGET OP OPERAND, e.g. 'counter value == 1'")
    key, target, op, operand = parts
    if target == CompareTarget.VALUE.value:
        return Compare(key, target, op, operand.encode("utf-8"))  # type: ignore[arg-type]
    try:
        number = int(operand)
    except ValueError:
        raise InvalidArgument(f"--if {clause!r}: {target} compares need an integer, got {operand!r}") from None
    return Compare(key, target, op, number)  # type: ignore[arg-type]


def parse_write(clause: str, flag: str) -> Write:
    """`put KEY VALUE` or `del KEY`."""
    parts = shlex.split(clause)
    if len(parts) == 3 and parts[0] == "put":
        return Put(parts[1], parts[2].encode("utf-8"))
    if len(parts) == 2 and parts[0] in ("del", "delete"):
        return Delete(parts[1])
    raise InvalidArgument(f"{flag} {clause!r}: expected 'put KEY VALUE' or 'del KEY'")


def cmd_txn(args: argparse.Namespace) -> int:
    compares = [parse_compare(c) for c in args.compare]
    on_success = [parse_write(w, "--then") for w in args.then]
    on_failure = [parse_write(w, "--else") for w in args.otherwise]
    if not (on_success or on_failure or compares):
        raise InvalidArgument("an empty transaction; give --if, --then and/or --else clauses")
    with _client(args) as client:
        result = client.txn(compares, on_success, on_failure)
    branch = "succeeded" if result.succeeded else "failed"
    print(f"{branch} revision {result.revision}")
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.compact(args.revision)
    print(f"compacted at revision {args.revision}")
    return 0


def cmd_failpoint(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.set_failpoint(args.node, args.name, args.action)
    print(f"{args.node}: {args.name} = {args.action}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("put", help="store a value under a key")
    p.add_argument("key")
    p.add_argument("value", help="the value ('-' reads it from stdin)")
    p.add_argument("--lease", type=int, default=0, help="attach the key to a lease id")
    p.set_defaults(handler=cmd_put)

    p = sub.add_parser("get", help="print a key's value (exit 2 if it does not exist)")
    p.add_argument("key")
    p.add_argument("--rev", type=int, default=0, help="read at a past revision")
    p.add_argument("--serializable", action="store_true", help="answer from local state, even if in doubt")
    p.add_argument("--json", action="store_true", help="print the key/value with its revisions as JSON")
    p.set_defaults(handler=cmd_get)

    p = sub.add_parser("del", help="delete a key")
    p.add_argument("key")
    p.set_defaults(handler=cmd_del)

    p = sub.add_parser("range", help="print every key under a prefix")
    p.add_argument("prefix")
    p.add_argument("--rev", type=int, default=0)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--serializable", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_range)

    p = sub.add_parser(
        "txn",
        help="an atomic transaction: --if compares, --then writes, --else writes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--if", dest="compare", action="append", default=[], metavar="'KEY TARGET OP OPERAND'")
    p.add_argument("--then", action="append", default=[], metavar="'put KEY VALUE' | 'del KEY'")
    p.add_argument("--else", dest="otherwise", action="append", default=[], metavar="'put KEY VALUE' | 'del KEY'")
    p.set_defaults(handler=cmd_txn)

    p = sub.add_parser("compact", help="forget history below a revision on every replica (as etcdctl compact)")
    p.add_argument("revision", type=int, help="reads and watches before it get Compacted from then on")
    p.set_defaults(handler=cmd_compact)

    p = sub.add_parser("failpoint", help="arm a failpoint on a node (testing): NODE NAME ACTION")
    p.add_argument("node")
    p.add_argument("name")
    p.add_argument("action", help="off | crash | pause | drop | error | sleep(MS) | delay(MS), optionally N*")
    p.set_defaults(handler=cmd_failpoint)
