"""`corral up | status | down` and the key/value commands, run as a user would, as processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.integration.harness import wait_until


def corral(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "corral", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def test_up_status_kv_down(tmp_path: Path) -> None:
    try:
        up = corral("up", "--dir", "corral-data", cwd=tmp_path)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "cluster is up" in up.stdout and (tmp_path / "corral-data" / "corral.toml").exists()
        again = corral("up", cwd=tmp_path)  # idempotent: every node is already running
        assert again.returncode == 0 and "nothing (all running)" not in again.stderr

        # The default lookup (./corral-data/corral.toml) finds the cluster from its parent folder.
        assert corral("put", "greeting", "hello", cwd=tmp_path).stdout.strip() == "1"
        assert corral("put", "greeting", "hello world", cwd=tmp_path).stdout.strip() == "2"
        assert corral("get", "greeting", cwd=tmp_path).stdout == "hello world\n"
        assert corral("get", "greeting", "--rev", "1", cwd=tmp_path).stdout == "hello\n"
        txn = corral("txn", "--if", 'greeting value == "hello world"', "--then", "put greeting bye", cwd=tmp_path)
        assert txn.stdout.strip() == "succeeded revision 3"
        assert corral("del", "greeting", cwd=tmp_path).stdout.strip() == "4"
        compacted = corral("compact", "3", cwd=tmp_path)
        assert compacted.returncode == 0 and compacted.stdout.strip() == "compacted at revision 3", compacted.stderr
        old = corral("get", "greeting", "--rev", "1", cwd=tmp_path)
        assert old.returncode == 1 and "revision 1 was compacted" in old.stderr, old.stdout + old.stderr
        future = corral("compact", "99", cwd=tmp_path)
        assert future.returncode == 2 and "cannot compact at revision 99" in future.stderr, future.stderr
        assert len(future.stderr.strip().splitlines()) == 1  # one readable line
        assert corral("range", "", cwd=tmp_path).stdout == ""

        # $CORRAL_CLUSTER wins over the default lookup.
        env = {"CORRAL_CLUSTER": str(tmp_path / "corral-data" / "corral.toml")}
        status = corral("status", "--json", cwd=Path("/"), env=env)
        assert status.returncode == 0, status.stderr
        nodes = json.loads(status.stdout)
        assert [n["name"] for n in nodes] == ["coordinator", "replica-1", "replica-2", "replica-3"]
        assert all(n["up"] for n in nodes)
        replicas = [n for n in nodes if n["role"] == "replica"]
        assert {(n["revision"], n["digest"]) for n in replicas} == {(4, replicas[0]["digest"])}
        table = corral("status", "--dir", "corral-data", cwd=tmp_path)
        assert "replica-2" in table.stdout and "up" in table.stdout
        assert "view 1: replica-1, replica-2, replica-3" in table.stdout, table.stdout
        assert table.stdout.count("member") == 3, table.stdout

        big = os.urandom(150_000).hex()  # 300 kB: more than a pipe holds
        put = subprocess.run(
            [sys.executable, "-m", "corral", "put", "big", "-"], input=big.encode(), cwd=tmp_path, capture_output=True
        )
        assert put.returncode == 0
        assert _get_into_a_slow_pipe("big", cwd=tmp_path) == big.encode() + b"\n"
    finally:
        down = corral("down", "--dir", "corral-data", cwd=tmp_path)
    assert down.returncode == 0 and "is down" in down.stdout
    status = corral("status", "--dir", "corral-data", cwd=tmp_path)
    assert status.returncode == 1 and "down" in status.stdout


def _get_into_a_slow_pipe(key: str, cwd: Path) -> bytes:
    """`corral get KEY` with stdout a pipe read only once the command is blocked writing to it (or
    has exited). A short write must not lose the rest: on uvloop it did, cut at 64 KiB, so the
    blocking client runs on asyncio's own loop."""
    proc = subprocess.Popen([sys.executable, "-m", "corral", "get", key], stdout=subprocess.PIPE, cwd=cwd)
    try:
        wait_until(lambda: proc.poll() is not None or _blocked_writing_stdout(proc.pid), 60, "a blocked write")
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0
    return out


def _blocked_writing_stdout(pid: int) -> bool:
    """The process sits in write(2) on fd 1 ("1 0x1 ..." in /proc/PID/syscall): the pipe is full. Where
    that file cannot be read (no ptrace rights, or the process just exited), read the pipe at once."""
    try:
        return Path(f"/proc/{pid}/syscall").read_text().startswith("1 0x1 ")
    except OSError:
        return True
