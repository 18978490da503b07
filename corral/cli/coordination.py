"""`corral lease | watch | lock | elect`: sessions, watches and the coordination recipes from the shell.

    corral lease grant 10                 print a new lease id (keys put with --lease ID die with it)
    corral lease keepalive ID [--once]    renew until interrupted
    corral lease revoke ID | ttl ID
    corral watch /config/ [--rev R]       one line per change under the prefix until interrupted
                                          (--key: one exact key; --count N to stop)
    corral lock build -- make release     run a command while holding a lock; exit with its status
    corral elect scheduler host-a:8080    campaign, say when elected, lead until interrupted

Commands that run until interrupted end cleanly on Ctrl-C or SIGTERM (a lock is released, a
leadership resigned) and then exit 0. `lock` hands the command its fencing token in
$CORRAL_LOCK_TOKEN; if the lock's session is lost while the command runs, the command is killed
(another process may hold the lock by then) and `lock` says so and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NoReturn, TypeVar

from corral.client.aio import AsyncClient, connect_async
from corral.client.session import RENEWALS_PER_TTL
from corral.errors import InvalidArgument, LeaseExpired, NotFound
from corral.model import Event, EventKind
from corral.recipes import DEFAULT_TTL_S, LeaderElection, Lock

# The exit status of a command killed by signal N, as a shell reports it.
SIGNAL_EXIT_BASE = 128
EXIT_LOST = 1  # the cluster's state: the lock or leadership was lost with its session
# The lock key's value names its holder for `corral range /corral/locks/`; a long command is cut.
LOCK_VALUE_CHARS_MAX = 200
EXIT_INTERRUPTED = SIGNAL_EXIT_BASE + signal.SIGINT  # stopped before the command could run
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_T = TypeVar("_T")


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="backslashreplace")


def _seconds(value: float, name: str) -> float:
    if not value > 0:
        raise InvalidArgument(f"{name} is {value}; give a positive number of seconds", field=name)
    return value


def _run(args: argparse.Namespace, body: Callable[[AsyncClient], Awaitable[int]]) -> int:
    """Connect, run `body`, close: one event loop for the whole command."""

    async def main() -> int:
        client = await connect_async(args.cluster, timeout=args.timeout)
        try:
            return await body(client)
        finally:
            await client.close()

    return asyncio.run(main())


async def _until_stopped(work: Coroutine[Any, Any, _T], stopped: _T) -> _T:
    """Run `work` until it ends or SIGINT/SIGTERM arrives; a signal cancels it (its `finally` blocks
    release what it holds) and then `stopped` is returned instead."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    signalled = False

    def stop() -> None:
        nonlocal signalled
        signalled = True
        task.cancel()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop)
    try:
        return await task
    except asyncio.CancelledError:
        if not signalled:
            raise
        return stopped
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


# -- lease --------------------------------------------------------------------------------------------


def cmd_lease_grant(args: argparse.Namespace) -> int:
    ttl = _seconds(args.ttl, "TTL_SECONDS")

    async def body(client: AsyncClient) -> int:
        print((await client.lease_grant(ttl)).id)
        return 0

    return _run(args, body)


def cmd_lease_keepalive(args: argparse.Namespace) -> int:
    async def body(client: AsyncClient) -> int:
        async def renew() -> int:
            # The coordinator answers a keepalive of an unknown lease with LeaseExpired, `ttl` and
            # `revoke` with NotFound: the CLI reports both as NotFound (exit 2), so a script sees one
            # status for "no such lease" whichever command asked.
            try:
                info = await client.lease_keepalive_once(args.id)
            except LeaseExpired:
                raise NotFound(f"lease {args.id} does not exist (or has ended)", lease=args.id) from None
            print(f"lease {info.id} renewed: {info.ttl_ms / 1000:g} s left", flush=True)
            interval = info.ttl_ms / 1000 / RENEWALS_PER_TTL  # as sessions renew
            while not args.once:
                await asyncio.sleep(interval)  # the renewal schedule, not a synchronisation
                try:
                    await client.lease_keepalive_once(args.id)
                except LeaseExpired as err:
                    raise NotFound(err.message, lease=args.id) from None
            return 0

        return await _until_stopped(renew(), 0)

    return _run(args, body)


def cmd_lease_revoke(args: argparse.Namespace) -> int:
    async def body(client: AsyncClient) -> int:
        await client.lease_revoke(args.id)
        print(f"lease {args.id} revoked; its keys are deleted")
        return 0

    return _run(args, body)


def cmd_lease_ttl(args: argparse.Namespace) -> int:
    async def body(client: AsyncClient) -> int:
        info = await client.lease_time_to_live(args.id)
        print(f"lease {info.id}: granted {info.ttl_ms / 1000:g} s, {info.remaining_ms / 1000:g} s left")
        return 0

    return _run(args, body)


# -- watch ----------------------------------------------------------------------------------------------


def format_event(event: Event, *, prev: bool, as_json: bool) -> str:
    """One event as one line: `REVISION PUT|DELETE KEY VALUE` (tab-separated), or JSON."""
    kv = event.kv
    if as_json:
        out: dict[str, object] = {"revision": kv.mod_revision, "type": event.kind.value, "key": kv.key}
        if event.kind is EventKind.PUT:
            out.update(value=_text(kv.value), version=kv.version, lease=kv.lease)
        if prev:
            out["prev_value"] = None if event.prev_kv is None else _text(event.prev_kv.value)
        return json.dumps(out)
    fields = [str(kv.mod_revision), event.kind.name, kv.key]
    if event.kind is EventKind.PUT:
        fields.append(_text(kv.value))
    if prev:
        fields.append("prev=" + ("<none>" if event.prev_kv is None else _text(event.prev_kv.value)))
    return "\t".join(fields)


def cmd_watch(args: argparse.Namespace) -> int:
    if args.count is not None and args.count < 1:
        raise InvalidArgument(f"--count is {args.count}; give at least 1", field="count")

    async def body(client: AsyncClient) -> int:
        async def follow() -> int:
            seen = 0
            events = client.watch(args.target, prefix=not args.key, start_revision=args.rev, prev_kv=args.prev)
            async for event in events:
                print(format_event(event, prev=args.prev, as_json=args.json), flush=True)
                seen += 1
                if args.count is not None and seen >= args.count:
                    return 0
            return 0

        return await _until_stopped(follow(), 0)

    return _run(args, body)


# -- lock -------------------------------------------------------------------------------------------------


def _exit_status(returncode: int) -> int:
    return SIGNAL_EXIT_BASE - returncode if returncode < 0 else returncode


def cmd_lock(args: argparse.Namespace) -> int:
    command = list(args.cmd)
    if command and command[0].startswith("-") and "--" in command:
        # Options after NAME (`corral lock NAME --ttl 3 -- CMD`): argparse hands them over with CMD.
        split = command.index("--")
        _lock_options(_OptionsParser(prog="corral lock", add_help=False)).parse_args(command[:split], namespace=args)
        command = command[split + 1 :]
    if not command:
        raise InvalidArgument("no command to run; usage: corral lock NAME -- CMD [ARGS...]")
    ttl = _seconds(args.ttl, "--ttl")

    async def body(client: AsyncClient) -> int:
        lock = Lock(client, args.name, ttl=ttl, value=f"pid {os.getpid()}: {' '.join(command)}"[:LOCK_VALUE_CHARS_MAX])
        token = await _until_stopped(lock.acquire(args.wait), None)
        if token is None:
            print(f"corral: interrupted while waiting for lock {args.name!r}; the command did not run", file=sys.stderr)
            return EXIT_INTERRUPTED
        try:
            return await _run_holding(lock, command, token)
        finally:
            await lock.release()

    return _run(args, body)


async def _run_holding(lock: Lock, command: list[str], token: int) -> int:
    """Run `command` in its own process group; forward SIGINT/SIGTERM to it; kill it if the lock is
    lost (its protection is gone: another process may hold the lock now)."""
    env = {**os.environ, "CORRAL_LOCK_TOKEN": str(token), "CORRAL_LOCK_KEY": lock.key or ""}
    try:
        proc = await asyncio.create_subprocess_exec(*command, env=env, process_group=0)
    except OSError as err:
        raise InvalidArgument(f"cannot run {command[0]!r}: {err.strerror}") from None
    loop = asyncio.get_running_loop()

    def forward(sig: signal.Signals) -> None:
        if proc.returncode is None:
            os.killpg(proc.pid, sig)

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, forward, sig)
    exited = asyncio.ensure_future(proc.wait())
    lost = asyncio.ensure_future(lock.lost.wait())
    try:
        await asyncio.wait([exited, lost], return_when=asyncio.FIRST_COMPLETED)
        if not exited.done():
            session = lock.session
            reason = session.lost_reason if session is not None else "session lost"
            print(f"corral: lock {lock.key} was lost ({reason}); killing the command", file=sys.stderr, flush=True)
            os.killpg(proc.pid, signal.SIGKILL)
            await exited
            return EXIT_LOST
        return _exit_status(exited.result())
    finally:
        lost.cancel()
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        if proc.returncode is None:  # we are being cancelled: leave nothing running
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


# -- elect -------------------------------------------------------------------------------------------------


def cmd_elect(args: argparse.Namespace) -> int:
    ttl = _seconds(args.ttl, "--ttl")

    async def body(client: AsyncClient) -> int:
        election = LeaderElection(client, args.name, ttl=ttl)
        current = await election.leader()
        if current is not None:
            print(f"campaigning; the leader now is {_text(current.value)!r} (term {current.term})", flush=True)

        async def lead() -> int:
            try:
                term = await election.campaign(args.value, args.wait)
                print(f"elected: {args.name} leader is {args.value!r} (term {term})", flush=True)
                await election.lost.wait()
                print(f"corral: leadership of {args.name!r} was lost with its session", file=sys.stderr)
                return EXIT_LOST
            finally:
                await election.resign()

        return await _until_stopped(lead(), 0)

    return _run(args, body)


class _OptionsParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise InvalidArgument(f"{message} (see `corral lock --help`)")


def _lock_options(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--ttl", type=float, default=DEFAULT_TTL_S, help=f"session TTL (default {DEFAULT_TTL_S:g} s)")
    p.add_argument("--wait", type=float, default=None, help="give up after this many seconds (default: wait)")
    return p


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    lease = sub.add_parser("lease", help="grant, keep alive, revoke or inspect a lease")
    lease_sub = lease.add_subparsers(dest="lease_command", metavar="ACTION", required=True)
    # `corral lease grant 10 --cluster X` too, as for the other commands (main.py's `common`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cluster", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    lease_sub.add_parser = functools.partial(lease_sub.add_parser, parents=[common])
    p = lease_sub.add_parser("grant", help="grant a lease; print its id")
    p.add_argument("ttl", type=float, metavar="TTL_SECONDS")
    p.set_defaults(handler=cmd_lease_grant)
    p = lease_sub.add_parser("keepalive", help="renew a lease until interrupted")
    p.add_argument("id", type=int, metavar="ID")
    p.add_argument("--once", action="store_true", help="renew once and exit")
    p.set_defaults(handler=cmd_lease_keepalive)
    p = lease_sub.add_parser("revoke", help="end a lease now (its keys are deleted)")
    p.add_argument("id", type=int, metavar="ID")
    p.set_defaults(handler=cmd_lease_revoke)
    p = lease_sub.add_parser("ttl", help="a lease's granted TTL and time left")
    p.add_argument("id", type=int, metavar="ID")
    p.set_defaults(handler=cmd_lease_ttl)

    p = sub.add_parser("watch", help="print each change under a prefix (or to one key) until interrupted")
    p.add_argument("target", metavar="PREFIX", help="watch every key starting with it (with --key: that key only)")
    exact = p.add_mutually_exclusive_group()
    exact.add_argument("--key", action="store_true", help="watch only the exact key PREFIX, not keys under it")
    # Watching a prefix used to need --prefix; it is the default now, and the flag is kept so that
    # existing scripts still run.
    exact.add_argument("--prefix", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rev", type=int, default=0, help="start at this revision (default: now)")
    p.add_argument("--prev", action="store_true", help="show each key's previous value too")
    p.add_argument("--count", type=int, help="stop after this many events")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(handler=cmd_watch)

    p = sub.add_parser("lock", help="run a command while holding a lock: corral lock NAME -- CMD ...")
    p.add_argument("name", metavar="NAME")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD", help="the command and its arguments")
    _lock_options(p)
    p.set_defaults(handler=cmd_lock)

    p = sub.add_parser("elect", help="campaign for leadership and lead until interrupted")
    p.add_argument("name", metavar="NAME")
    p.add_argument("value", metavar="VALUE", help="what to publish as leader (e.g. this host's address)")
    p.add_argument("--ttl", type=float, default=DEFAULT_TTL_S, help=f"session TTL (default {DEFAULT_TTL_S:g} s)")
    p.add_argument("--wait", type=float, default=None, help="give up after this many seconds (default: wait)")
    p.set_defaults(handler=cmd_elect)
