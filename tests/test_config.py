"""corral.toml: written by init, read back the same, validated with clear errors, found by lookup."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral import FailedPrecondition, InvalidArgument, NotFound
from corral.config import CONFIG_NAME, ENV_CLUSTER, ClusterConfig, find_config, init_cluster


def test_init_writes_a_config_that_loads_back(tmp_path: Path) -> None:
    config = init_cluster(tmp_path / "c", replicas=5)
    loaded = ClusterConfig.load(config.path)
    assert list(loaded.nodes) == ["coordinator", *[f"replica-{i}" for i in range(1, 6)]]
    assert loaded.nodes == config.nodes and loaded.timeouts == config.timeouts
    assert len({n.port for n in loaded.nodes.values()}) == 6
    assert loaded.node("replica-3").data_dir == (tmp_path / "c" / "replica-3").resolve()
    with pytest.raises(FailedPrecondition, match="already exists"):
        init_cluster(tmp_path / "c")
    with pytest.raises(NotFound, match="no node named 'replica-9'"):
        loaded.node("replica-9")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nodes = [", "not valid TOML"),
        ("[nodes.replica-1]\nrole = 'replica'\nport = 1\npeer_port = 2\n", "must define [nodes.coordinator]"),
        ("[nodes.coordinator]\nrole = 'coordinator'\nport = 1\npeer_port = 2\n", "defines no replica nodes"),
        ("[nodes.coordinator]\nrole = 'boss'\nport = 1\n", "role is 'boss'"),
        ("[nodes.coordinator]\nrole = 'coordinator'\nport = 'x'\n", "port must be an integer"),
        ("[nodes.coordinator]\nrole = 'coordinator'\nport = 1\n", "peer_port must be an integer 1..65535, got None"),
        ("[nodes.coordinator]\nrole = 'coordinator'\nport = 1\npeer_port = 1\n", "peer_port must differ from port"),
        ("[timeouts]\nprepare_timeout = 5\n", "unknown setting 'prepare_timeout'"),
        ("[limits]\nvalue_bytes_max = -1\n", "must be a positive integer"),
        ("[limits]\ntxn_ops_max = 65537\n", "txn_ops_max in"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / CONFIG_NAME
    path.write_text(text)
    with pytest.raises(InvalidArgument) as info:
        ClusterConfig.load(path)
    assert message in info.value.message


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = init_cluster(tmp_path / "explicit").path
    from_env = init_cluster(tmp_path / "env").path
    default = init_cluster(tmp_path / "corral-data").path
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(ENV_CLUSTER, raising=False)
    assert find_config(None) == default
    monkeypatch.setenv(ENV_CLUSTER, str(from_env))
    assert find_config(None) == from_env
    assert find_config(str(explicit)) == explicit
    assert find_config(str(explicit.parent)) == explicit  # a folder works too
    monkeypatch.setenv(ENV_CLUSTER, str(tmp_path / "missing.toml"))
    with pytest.raises(NotFound, match=r"from \$CORRAL_CLUSTER"):
        find_config(None)
