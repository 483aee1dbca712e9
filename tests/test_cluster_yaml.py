"""cluster.yaml against the Ray cluster launcher's own JSON schema, and our conventions."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def load_cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_matches_the_launcher_schema() -> None:
    jsonschema.validate(load_cluster(), SCHEMA)


def test_the_schema_check_catches_a_typo() -> None:
    cfg = load_cluster()
    cfg["available_node_types"]["head"]["min_worker"] = 1  # not a launcher key
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        jsonschema.validate(cfg, SCHEMA)


def test_head_runs_nothing_workers_carry_roles_and_auth_is_on() -> None:
    cfg = load_cluster()
    nodes = cfg["available_node_types"]
    assert nodes[cfg["head_node_type"]]["resources"] == {"CPU": 0}
    roles = {r for n in nodes.values() for r in n["resources"]}
    assert {"harvester_gpu", "trainer_gpu"} <= roles
    starts = cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start  # reachable only via `ray dashboard`
    assert any("thresher" in c for c in cfg["setup_commands"])
