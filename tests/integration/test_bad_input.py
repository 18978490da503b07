"""Bad input gets a clear error and loses nothing: no process dies, nothing is written.

Requests go over raw gRPC, past the SDK's own checks, so the servers' validation is what is tested.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from corral import InvalidArgument
from corral.rpc import corral_pb2 as pb
from corral.rpc import corral_pb2_grpc as pb_grpc
from tests.integration.harness import LocalCluster, local_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("bad-input")) as c:
        c.start()
        with c.client() as client:
            client.put("keep", "me")
        yield c


def _put(key: str, value: bytes = b"v") -> pb.Txn:
    return pb.Txn(on_success=[pb.Write(put=pb.PutOp(key=key, value=value))])


BAD_TXNS = {
    "empty key": (_put(""), "key is empty"),
    "key over 1024 bytes": (_put("k" * 1025), "1025 bytes; the limit is 1024"),
    "key with NUL": (_put("a\x00b"), "NUL"),
    "value over 1 MiB": (_put("big", b"x" * (1024 * 1024 + 1)), "the limit is 1.0 MiB"),
    "write with no operation": (pb.Txn(on_success=[pb.Write()]), "must be a put, a delete or a sequential put"),
    "unknown compare target": (
        pb.Txn(compares=[pb.Compare(key="k", target="colour", op="==", number=1)]),
        "compare target 'colour' is unknown",
    ),
    "unknown compare operator": (
        pb.Txn(compares=[pb.Compare(key="k", target="version", op="~=", number=1)]),
        "compare op '~=' is unknown",
    ),
    "number compare given bytes": (
        pb.Txn(compares=[pb.Compare(key="k", target="version", op="==", value=b"1")]),
        "needs an int operand",
    ),
    "same key twice": (
        pb.Txn(on_success=[pb.Write(put=pb.PutOp(key="d", value=b"1")), pb.Write(delete=pb.DeleteOp(key="d"))]),
        "written twice",
    ),
    "too many operations": (
        pb.Txn(on_success=[pb.Write(put=pb.PutOp(key=f"k{i}", value=b"1")) for i in range(129)]),
        "the limit is 128",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_TXNS))
def test_bad_write_is_refused_with_a_reason(cluster: LocalCluster, case: str) -> None:
    txn, message = BAD_TXNS[case]
    before = cluster.status()["coordinator"].revision
    with grpc.insecure_channel(cluster.config.coordinator.address) as channel:
        response = pb_grpc.ClientStub(channel).Txn(pb.TxnRequest(client_id="bad", seq=1, txn=txn), timeout=10)
    assert response.error.code == InvalidArgument.code
    assert message in response.error.message
    status = cluster.status()
    assert all(s.up for s in status.values()), "a bad request must not kill any process"
    assert status["coordinator"].revision == before, "nothing may be written"


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (pb.RangeRequest(key=""), "key is empty"),
        (pb.RangeRequest(key="k\x00"), "NUL"),
        (pb.RangeRequest(key="keep", revision=-1), "revisions start at 1"),
        (pb.RangeRequest(key="keep", revision=10**9), "in the future"),
        (pb.RangeRequest(key="/", prefix=True, limit=-5), "limit is -5"),
    ],
)
def test_bad_read_is_refused_with_a_reason(cluster: LocalCluster, request_: pb.RangeRequest, message: str) -> None:
    with grpc.insecure_channel(cluster.config.replicas[0].address) as channel:
        response = pb_grpc.ClientStub(channel).Range(request_, timeout=10)
    assert response.error.code == InvalidArgument.code
    assert message in response.error.message


def test_write_sent_to_a_replica_is_refused(cluster: LocalCluster) -> None:
    with grpc.insecure_channel(cluster.config.replicas[0].address) as channel:
        response = pb_grpc.ClientStub(channel).Txn(pb.TxnRequest(txn=_put("x")), timeout=10)
    assert response.error.code == InvalidArgument.code and "writes go to the coordinator" in response.error.message


def test_garbage_peer_batch_is_refused_and_nobody_dies(cluster: LocalCluster) -> None:
    with grpc.insecure_channel(cluster.config.replicas[0].address) as channel:
        bad = pb.Batch(src="coordinator", messages=[pb.PeerMessage()])
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.PeerStub(channel).Step(bad, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert all(s.up for s in cluster.status().values())


@pytest.mark.parametrize("node", ["coordinator", "replica-1"])
def test_garbage_on_the_peer_port_is_cut_off_and_nobody_dies(cluster: LocalCluster, node: str) -> None:
    peer = cluster.config.nodes[node]
    with socket.create_connection((peer.host, peer.peer_port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(1024) == b""  # closed by the node, nothing answered
    assert all(s.up for s in cluster.status().values())
    with cluster.client() as c:
        assert c.put(f"after-garbage-{node}", "v") > 0


def test_sdk_checks_before_sending(cluster: LocalCluster) -> None:
    with cluster.client() as c:
        with pytest.raises(InvalidArgument, match="value must be bytes or str, got int"):
            c.put("k", 5)  # type: ignore[arg-type]  # deliberately not bytes or str: checks the SDK check
        with pytest.raises(InvalidArgument, match="key is empty"):
            c.get("")
        with pytest.raises(InvalidArgument, match="timeout must be a positive"):
            c.put("k", "v", timeout=-1)
        kv = c.get("keep")
    assert kv is not None and kv.value == b"me"


def test_cli_bad_input_is_one_line_and_exit_2(cluster: LocalCluster, tmp_path: Path) -> None:
    import subprocess
    import sys

    def corral(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "corral", "--cluster", str(cluster.path), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    for args, message in [
        (("put", "", "v"), "key is empty"),
        (("txn", "--if", "k value =="), "expected KEY TARGET OP OPERAND"),
        (("txn", "--then", "upsert k v"), "expected 'put KEY VALUE' or 'del KEY'"),
        (("get", "missing-key"), "not found"),
        (("failpoint", "replica-1", "x", "explode"), "is not valid"),
        (("frobnicate",), "invalid choice"),
    ]:
        out = corral(*args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, out.stderr)
    missing = subprocess.run(
        [sys.executable, "-m", "corral", "--cluster", str(tmp_path / "nope.toml"), "get", "k"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "no cluster config at" in missing.stderr
