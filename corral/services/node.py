"""`corral node`: run one node of a cluster in the foreground until SIGTERM/SIGINT.

SIGTERM stops cleanly (pending END marks flushed, files closed). SIGKILL is a crash; the next start
recovers from the node's logs, which is the path every test with `kill -9` exercises.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import grpc

from corral import eventloop
from corral.config import ClusterConfig, NodeConfig
from corral.errors import FailedPrecondition
from corral.rpc import corral_pb2 as pb
from corral.rpc import corral_pb2_grpc as pb_grpc
from corral.rpc.framing import RANGES_GREETING, TXNS_GREETING
from corral.services.coordinator import CoordinatorService
from corral.services.failpoints import Failpoints
from corral.services.replica import ReplicaService
from corral.services.wire import DirectStream, StreamHandler, listen

# Clients may send and receive large transactions and ranges (limits are checked by the services).
SERVER_OPTIONS = (
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
)

log = logging.getLogger(__name__)


def configure_logging(node: str) -> None:
    level = os.environ.get("CORRAL_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format=f"%(asctime)s %(levelname)s node={node} %(name)s: %(message)s",
        stream=sys.stderr,
    )


async def serve(config: ClusterConfig, node: NodeConfig, faults: Failpoints) -> None:
    node.data_dir.mkdir(parents=True, exist_ok=True)
    service: CoordinatorService | ReplicaService
    if node.role == "coordinator":
        service = CoordinatorService(config, node, faults)
    else:
        service = ReplicaService(config, node, faults)
    server = grpc.aio.server(options=SERVER_OPTIONS)
    pb_grpc.add_ClientServicer_to_server(service, server)
    pb_grpc.add_PeerServicer_to_server(service, server)
    pb_grpc.add_AdminServicer_to_server(service, server)
    try:
        bound = server.add_insecure_port(node.address)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise FailedPrecondition(f"cannot listen on {node.address}: the port is in use or the host is not local")
    # The wire serves peers and, with the same handlers as gRPC, clients' call streams (the
    # coordinator's writes by callback, without the generator's task switches).
    txns: tuple[type[Any], StreamHandler] | DirectStream = (pb.TxnCalls, service.Txns)
    if isinstance(service, CoordinatorService):
        txns = DirectStream(pb.TxnCalls, service.txns_direct, lambda returns: pb.TxnReturns(returns=returns))
    streams = {TXNS_GREETING: txns, RANGES_GREETING: (pb.RangeCalls, service.Ranges)}
    peers = await listen(node.host, node.peer_port, service.counted, node.name, streams, step_now=service.step_now)
    await service.start()
    await server.start()
    log.info(
        "node=%s role=%s ready address=%s peer_address=%s pid=%d",
        node.name,
        node.role,
        node.address,
        node.peer_address,
        os.getpid(),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("node=%s stopping", node.name)
    peers.close()
    await server.stop(grace=1.0)
    await service.close()
    log.info("node=%s stopped", node.name)


def run_node(config_path: str | Path, name: str) -> None:
    config = ClusterConfig.load(config_path)
    node = config.node(name)
    configure_logging(name)
    faults = Failpoints.from_environment(name, node.failpoints, role=node.role)
    eventloop.run(serve(config, node, faults))
