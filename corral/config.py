"""Cluster configuration: `corral.toml`, which names every node with its address and data directory.

Written by `corral init`, read by every node and client. Data directories are relative to the file's
folder, so a cluster directory can be moved or copied whole. Clients find the file through
`--cluster PATH`, then `$CORRAL_CLUSTER`, then `./corral-data/corral.toml`.

Written by hand rather than with a TOML writer library: the file is flat, and strings are emitted
with JSON escaping, which is valid TOML basic-string syntax.
"""

from __future__ import annotations

import json
import os
import socket
import tomllib
from dataclasses import field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from corral.errors import FailedPrecondition, InvalidArgument, NotFound
from corral.frozen import frozen
from corral.limits import DEFAULT_LIMITS, DEFAULT_TIMEOUTS, MIN_REPLICAS, TXN_OPS_CEILING, Limits, Timeouts

CONFIG_NAME = "corral.toml"
DEFAULT_DIR = "corral-data"
ENV_CLUSTER = "CORRAL_CLUSTER"
COORDINATOR = "coordinator"
ROLES = ("coordinator", "replica")

_Settings = TypeVar("_Settings", Timeouts, Limits)


@frozen
class NodeConfig:
    name: str
    role: str
    host: str
    port: int  # gRPC: clients and administration
    peer_port: int  # the peer wire (services/wire.py): other nodes
    data_dir: Path
    failpoints: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def peer_address(self) -> str:
        return f"{self.host}:{self.peer_port}"


@frozen
class ClusterConfig:
    path: Path
    name: str
    nodes: dict[str, NodeConfig]
    timeouts: Timeouts = DEFAULT_TIMEOUTS
    limits: Limits = DEFAULT_LIMITS
    min_replicas: int = MIN_REPLICAS

    @property
    def directory(self) -> Path:
        return self.path.parent

    @property
    def coordinator(self) -> NodeConfig:
        return self.nodes[COORDINATOR]

    @property
    def replicas(self) -> list[NodeConfig]:
        return [n for n in self.nodes.values() if n.role == "replica"]

    def peer_addresses(self, name: str) -> dict[str, str]:
        """Every other node's peer address, by name: whom node `name` opens peer links to."""
        return {n.name: n.peer_address for n in self.nodes.values() if n.name != name}

    def node(self, name: str) -> NodeConfig:
        try:
            return self.nodes[name]
        except KeyError:
            known = ", ".join(self.nodes)
            raise NotFound(f"no node named {name!r} in {self.path}; nodes are {known}") from None

    @classmethod
    def load(cls, path: str | Path) -> ClusterConfig:
        """Read and validate a corral.toml.

        Raises:
            NotFound: no such file.
            InvalidArgument: the file is not valid TOML or misses required settings.
        """
        path = Path(path).resolve()
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise NotFound(f"no cluster config at {path}; run `corral init` or `corral up` first") from None
        except tomllib.TOMLDecodeError as exc:
            raise InvalidArgument(f"{path} is not valid TOML: {exc}") from None
        timeouts = _dataclass_from(Timeouts, raw.get("timeouts", {}), path, "timeouts")
        limits = _dataclass_from(Limits, raw.get("limits", {}), path, "limits")
        if limits.txn_ops_max > TXN_OPS_CEILING:
            raise InvalidArgument(
                f"[limits] txn_ops_max in {path} is at most {TXN_OPS_CEILING:,}, got {limits.txn_ops_max:,}"
            )
        nodes: dict[str, NodeConfig] = {}
        for name, spec in raw.get("nodes", {}).items():
            nodes[name] = _node(path, name, spec)
        if COORDINATOR not in nodes or nodes[COORDINATOR].role != "coordinator":
            raise InvalidArgument(f'{path} must define [nodes.{COORDINATOR}] with role = "coordinator"')
        if not any(n.role == "replica" for n in nodes.values()):
            raise InvalidArgument(f"{path} defines no replica nodes")
        cluster = raw.get("cluster", {})
        min_replicas = cluster.get("min_replicas", MIN_REPLICAS)
        if isinstance(min_replicas, bool) or not isinstance(min_replicas, int) or min_replicas < 1:
            raise InvalidArgument(f"[cluster] min_replicas in {path} must be a positive integer, got {min_replicas!r}")
        return cls(path, str(cluster.get("name", "corral")), nodes, timeouts, limits, min_replicas)

    def dumps(self) -> str:
        lines = [
            "# Corral cluster configuration (written by `corral init`). Data directories are relative",
            "# to this file's folder. Every node and client of the cluster reads this file.",
            "",
            "[cluster]",
            f"name = {json.dumps(self.name)}",
            "# Writes stop (Unavailable) rather than continue on fewer replicas than this.",
            f"min_replicas = {self.min_replicas}",
            "",
            "[timeouts]",
            *(f"{f.name} = {getattr(self.timeouts, f.name)}" for f in fields(Timeouts)),
            "",
            "[limits]",
            *(f"{f.name} = {getattr(self.limits, f.name)}" for f in fields(Limits)),
        ]
        for node in self.nodes.values():
            try:
                data_dir = str(node.data_dir.relative_to(self.directory))
            except ValueError:
                data_dir = str(node.data_dir)
            lines += [
                "",
                f"[nodes.{node.name}]",
                f"role = {json.dumps(node.role)}",
                f"host = {json.dumps(node.host)}",
                f"port = {node.port}",
                f"peer_port = {node.peer_port}",
                f"data_dir = {json.dumps(data_dir)}",
            ]
            if node.failpoints:
                lines.append(f"[nodes.{node.name}.failpoints]")
                lines += [f"{json.dumps(k)} = {json.dumps(v)}" for k, v in node.failpoints.items()]
        return "\n".join(lines) + "\n"

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(self.dumps())
        os.replace(tmp, self.path)


def _node(path: Path, name: str, spec: Any) -> NodeConfig:
    where = f"[nodes.{name}] in {path}"
    if not isinstance(spec, dict):
        raise InvalidArgument(f"{where} must be a table")
    role = spec.get("role")
    if role not in ROLES:
        raise InvalidArgument(f"{where}: role is {role!r}; use one of {', '.join(ROLES)}")
    port = _port(spec, "port", where)
    peer_port = _port(spec, "peer_port", where)
    if peer_port == port:
        raise InvalidArgument(f"{where}: peer_port must differ from port ({port})")
    host = spec.get("host", "127.0.0.1")
    if not isinstance(host, str) or not host:
        raise InvalidArgument(f"{where}: host must be a non-empty string")
    data_dir = Path(str(spec.get("data_dir", name)))
    failpoints = spec.get("failpoints", {})
    if not isinstance(failpoints, dict):
        raise InvalidArgument(f'{where}: failpoints must be a table of name = "action"')
    return NodeConfig(
        name,
        role,
        host,
        port,
        peer_port,
        data_dir if data_dir.is_absolute() else path.parent / data_dir,
        {str(k): str(v) for k, v in failpoints.items()},
    )


def _port(spec: dict[str, Any], key: str, where: str) -> int:
    port = spec.get(key)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise InvalidArgument(f"{where}: {key} must be an integer 1..65535, got {port!r}")
    return port


def _dataclass_from(cls: type[_Settings], raw: Any, path: Path, section: str) -> _Settings:
    if not isinstance(raw, dict):
        raise InvalidArgument(f"[{section}] in {path} must be a table")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InvalidArgument(
            f"[{section}] in {path}: unknown setting {unknown[0]!r}; known: {', '.join(sorted(known))}"
        )
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InvalidArgument(f"[{section}] {key} in {path} must be a positive integer, got {value!r}")
    return replace(cls(), **raw)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the OS picks it; a race with other programs is possible)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def new_cluster(
    directory: str | Path,
    *,
    replicas: int = 3,
    host: str = "127.0.0.1",
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
    limits: Limits = DEFAULT_LIMITS,
    name: str = "corral",
) -> ClusterConfig:
    """A config for a local cluster: a coordinator and `replicas` replicas on free ports."""
    if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= 15:
        raise InvalidArgument(f"replicas is {replicas!r}; choose 1..15")
    directory = Path(directory).resolve()
    ports: set[int] = set()
    while len(ports) < 2 * (replicas + 1):
        ports.add(free_port(host))
    port_list = sorted(ports)
    names = [COORDINATOR] + [f"replica-{i}" for i in range(1, replicas + 1)]
    nodes = {
        name_i: NodeConfig(
            name_i,
            "coordinator" if name_i == COORDINATOR else "replica",
            host,
            port_list[2 * i],
            port_list[2 * i + 1],
            directory / name_i,
        )
        for i, name_i in enumerate(names)
    }
    return ClusterConfig(directory / CONFIG_NAME, name, nodes, timeouts, limits)


def init_cluster(directory: str | Path, *, replicas: int = 3, host: str = "127.0.0.1") -> ClusterConfig:
    """`corral init`: write DIR/corral.toml (refusing to overwrite an existing cluster)."""
    config = new_cluster(directory, replicas=replicas, host=host)
    if config.path.exists():
        raise FailedPrecondition(f"{config.path} already exists; remove it or use another --dir")
    config.save()
    return config


def find_config(explicit: str | Path | None = None) -> Path:
    """The cluster config a client should use: --cluster, then $CORRAL_CLUSTER, then ./corral-data.

    Raises:
        NotFound: none of them exists.
    """
    candidates: list[tuple[str, Path]] = []
    if explicit:
        candidates.append(("--cluster", Path(explicit)))
    elif os.environ.get(ENV_CLUSTER):
        candidates.append((f"${ENV_CLUSTER}", Path(os.environ[ENV_CLUSTER])))
    else:
        candidates.append(("default", Path(DEFAULT_DIR) / CONFIG_NAME))
    source, path = candidates[0]
    if path.is_dir():
        path = path / CONFIG_NAME
    if not path.exists():
        hint = "run `corral up` to start a local cluster, or pass --cluster PATH"
        raise NotFound(f"no cluster config at {path} (from {source}); {hint}")
    return path.resolve()
