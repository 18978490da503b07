"""Python SDK: `corral.connect(...)` (blocking) and `corral.connect_async(...)` (asyncio)."""

from corral.client.aio import AsyncClient, Endpoints, NodeStatus, TxnResponse, connect_async
from corral.client.sync import Client, connect

__all__ = ["AsyncClient", "Client", "Endpoints", "NodeStatus", "TxnResponse", "connect", "connect_async"]
