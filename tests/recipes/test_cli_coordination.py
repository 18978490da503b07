"""`corral lease | watch | lock | elect` run as a user runs them: real processes, output, exit status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.integration.harness import LocalCluster, wait_until
from tests.recipes.conftest import ROOT

CORRAL = [sys.executable, "-m", "corral"]


def corral(cluster: LocalCluster, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CORRAL, "--cluster", str(cluster.path), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def spawn(cluster: LocalCluster, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CORRAL, "--cluster", str(cluster.path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_lock_from_two_shells_never_overlaps(shared_cluster: LocalCluster, tmp_path: Path) -> None:
    """Two shells each run `corral lock NAME -- sh -c '...'` three times; the commands append start
    and end lines to one file, and never overlap."""
    log = tmp_path / "shells.log"
    body = f'echo "start $0 $CORRAL_LOCK_TOKEN" >> {log}; sleep 0.2; echo "end $0" >> {log}'
    command = f"{' '.join(CORRAL)} --cluster {shared_cluster.path} lock shells -- sh -c '{body}' $1"
    loop = f"for i in 1 2 3; do {command} || exit 9; done"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    shells = [subprocess.Popen(["sh", "-c", loop, "sh", name], env=env) for name in ("A", "B")]
    for shell in shells:
        assert shell.wait(timeout=90) == 0
    lines = log.read_text().split("\n")[:-1]
    assert len(lines) == 12
    tokens = []
    for start, end in zip(lines[::2], lines[1::2], strict=True):
        who, token = start.split()[1:]
        assert end == f"end {who}", f"overlap: {start!r} was followed by {end!r}"
        tokens.append(int(token))
    assert tokens == sorted(tokens) and len(set(tokens)) == 6


def test_lock_runs_the_command_and_passes_its_status(shared_cluster: LocalCluster) -> None:
    out = corral(shared_cluster, "lock", "status", "--", "sh", "-c", "echo token=$CORRAL_LOCK_TOKEN; exit 3")
    assert out.returncode == 3 and out.stdout.startswith("token=")
    out = corral(shared_cluster, "lock", "status", "--wait", "5", "--", "true")  # options after NAME too
    assert out.returncode == 0, out.stderr
    out = corral(shared_cluster, "lock", "status")
    assert out.returncode == 2 and "no command to run" in out.stderr
    out = corral(shared_cluster, "lock", "status", "--", "/no/such/program")
    assert out.returncode == 2 and "cannot run" in out.stderr


def test_lock_kills_the_command_when_the_session_is_lost(shared_cluster: LocalCluster, tmp_path: Path) -> None:
    """The lock's lease is revoked while the command runs: corral says so on stderr, kills the
    command, and exits 1."""
    started, finished = tmp_path / "started", tmp_path / "finished"
    command = f"touch {started}; sleep 30; touch {finished}"
    proc = spawn(shared_cluster, "lock", "cli-lost", "--ttl", "1", "--", "sh", "-c", command)
    wait_until(started.exists, 30, "the command to run")
    with shared_cluster.client(timeout=10) as client:
        held = client.range("/corral/locks/cli-lost/")
        client._run(client.aio.lease_revoke(held[0].lease))
    assert proc.wait(timeout=10) == 1
    assert proc.stderr is not None and "was lost" in proc.stderr.read()
    assert not finished.exists()


def test_lease_commands(shared_cluster: LocalCluster) -> None:
    grant = corral(shared_cluster, "lease", "grant", "30")
    assert grant.returncode == 0, grant.stderr
    lease = grant.stdout.strip()
    assert corral(shared_cluster, "put", "/cli/eph", "v", "--lease", lease).returncode == 0
    ttl = corral(shared_cluster, "lease", "ttl", lease)
    assert ttl.returncode == 0 and "granted 30 s" in ttl.stdout
    keep = corral(shared_cluster, "lease", "keepalive", lease, "--once")
    assert keep.returncode == 0 and "renewed" in keep.stdout
    renewing = spawn(shared_cluster, "lease", "keepalive", lease)
    assert renewing.stdout is not None and "renewed" in renewing.stdout.readline()
    renewing.send_signal(signal.SIGINT)
    assert renewing.wait(timeout=10) == 0
    revoke = corral(shared_cluster, "lease", "revoke", lease)
    assert revoke.returncode == 0 and "revoked" in revoke.stdout
    assert corral(shared_cluster, "get", "/cli/eph").returncode == 2
    gone = corral(shared_cluster, "lease", "ttl", lease)
    assert gone.returncode == 2 and "does not exist" in gone.stderr
    bad = corral(shared_cluster, "lease", "grant", "0")
    assert bad.returncode == 2 and "TTL_SECONDS" in bad.stderr


def test_an_unknown_lease_is_exit_2_for_every_lease_command(shared_cluster: LocalCluster) -> None:
    """A revoked lease and one never granted: keepalive (once or not), ttl and revoke all say so in
    one line and exit 2, as for any unknown id."""
    revoked = corral(shared_cluster, "lease", "grant", "30").stdout.strip()
    assert corral(shared_cluster, "lease", "revoke", revoked).returncode == 0
    never = str(2**62)
    for lease in (revoked, never):
        for command in (("keepalive", lease), ("keepalive", lease, "--once"), ("ttl", lease), ("revoke", lease)):
            out = corral(shared_cluster, "lease", *command)
            assert out.returncode == 2, (command, out.returncode, out.stderr)
            assert out.stdout == ""
            assert out.stderr == f"corral: lease {lease} does not exist (or has ended)\n", (command, out.stderr)


def test_watch_prints_events_until_count(shared_cluster: LocalCluster) -> None:
    with shared_cluster.client(timeout=10) as client:
        start = client.put("/cli/w/a", "1")
        client.put("/cli/w/a", "2")
        client.delete("/cli/w/a")
    # --prefix is what a prefix watch once needed: still accepted, and changes nothing.
    out = corral(shared_cluster, "watch", "/cli/w/", "--prefix", "--rev", str(start), "--prev", "--count", "3")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        f"{start}\tPUT\t/cli/w/a\t1\tprev=<none>",
        f"{start + 1}\tPUT\t/cli/w/a\t2\tprev=1",
        f"{start + 2}\tDELETE\t/cli/w/a\tprev=2",
    ]
    as_json = corral(shared_cluster, "watch", "/cli/w/a", "--key", "--rev", str(start), "--count", "1", "--json")
    assert json.loads(as_json.stdout) == {
        "revision": start,
        "type": "put",
        "key": "/cli/w/a",
        "value": "1",
        "version": 1,
        "lease": 0,
    }
    assert corral(shared_cluster, "watch", "/cli/w/", "--count", "0").returncode == 2
    both = corral(shared_cluster, "watch", "/cli/w/", "--key", "--prefix")
    assert both.returncode == 2 and len(both.stderr.splitlines()) == 1 and "--key" in both.stderr


def test_watch_prefix_is_the_default(shared_cluster: LocalCluster) -> None:
    """`corral watch PREFIX --rev R`, as the issue spells it: every key under PREFIX, none beside it."""
    with shared_cluster.client(timeout=10) as client:
        start = client.put("/cli/wp/a", "1")
        client.put("/cli/wp-beside", "not under /cli/wp/")
        client.put("/cli/wp/b", "2")
        client.put("/cli/wp/a", "3")
    out = corral(shared_cluster, "watch", "/cli/wp/", "--rev", str(start), "--count", "3")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        f"{start}\tPUT\t/cli/wp/a\t1",
        f"{start + 2}\tPUT\t/cli/wp/b\t2",
        f"{start + 3}\tPUT\t/cli/wp/a\t3",
    ]


def test_watch_key_sees_only_that_key(shared_cluster: LocalCluster) -> None:
    """With --key, a key that merely starts with the name (/cli/wk/ab) is not watched."""
    with shared_cluster.client(timeout=10) as client:
        start = client.put("/cli/wk/a", "1")
        client.put("/cli/wk/ab", "other")
        client.delete("/cli/wk/a")
    out = corral(shared_cluster, "watch", "/cli/wk/a", "--key", "--rev", str(start), "--count", "2")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"{start}\tPUT\t/cli/wk/a\t1", f"{start + 2}\tDELETE\t/cli/wk/a"]


def test_elect_leads_until_interrupted_then_hands_over(shared_cluster: LocalCluster) -> None:
    first = spawn(shared_cluster, "elect", "cli", "host-a", "--ttl", "2")
    assert first.stdout is not None and "elected" in first.stdout.readline()
    second = spawn(shared_cluster, "elect", "cli", "host-b", "--ttl", "2")
    assert second.stdout is not None and "the leader now is 'host-a'" in second.stdout.readline()
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=10) == 0
    assert "elected: cli leader is 'host-b'" in second.stdout.readline()
    second.send_signal(signal.SIGINT)
    assert second.wait(timeout=10) == 0
    with shared_cluster.client(timeout=10) as client:
        assert client.range("/corral/elections/cli/") == []
