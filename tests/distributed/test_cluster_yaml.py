"""cluster.yaml against the Ray cluster launcher's own schema and our conventions, and
docs/cluster.md against the code (its config plans; its `thresher` commands parse)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from tests.paths import ROOT
from thresher.cli import _parser
from thresher.config import ResourcesConfig, load_config, make_plan

SCHEMA = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
DOCS = (ROOT / "docs" / "cluster.md").read_text()


def load_cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def ray_starts(cfg: dict) -> list[str]:
    return [c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
            if "ray start" in c]


def test_cluster_yaml_matches_the_launcher_schema() -> None:
    jsonschema.validate(load_cluster(), SCHEMA)


def test_the_schema_check_catches_a_typo() -> None:
    cfg = load_cluster()
    cfg["available_node_types"]["head"]["min_worker"] = 1  # not a launcher key
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        jsonschema.validate(cfg, SCHEMA)


def test_head_runs_no_tasks() -> None:
    cfg = load_cluster()
    assert cfg["available_node_types"][cfg["head_node_type"]]["resources"] == {"CPU": 0}
    assert "--num-cpus=0" in " ".join(cfg["head_start_ray_commands"])


def test_worker_types_declare_the_role_resources_thresher_asks_for() -> None:
    cfg = load_cluster()
    workers = {name: node for name, node in cfg["available_node_types"].items()
               if name != cfg["head_node_type"]}
    defaults = ResourcesConfig()
    roles = {defaults.harvest_node_resource, defaults.train_node_resource}
    for role in roles:
        declaring = [n for n in workers.values() if n["resources"].get(role, 0) >= 1]
        assert declaring and all(n["min_workers"] >= 1 for n in declaring), role
    for node in workers.values():  # GPU instances: the GPUs come from `ray start` itself
        assert node["node_config"]["InstanceType"].startswith(("g", "p"))


def test_token_auth_on_every_node_and_dashboard_only_on_loopback() -> None:
    cfg = load_cluster()
    assert all("RAY_AUTH_MODE=token" in c for c in ray_starts(cfg))
    # One token for all: the client's own file lands on every node (workers get the head's).
    assert cfg["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head  # reachable only via `ray dashboard`
    assert "--dashboard-port" not in head and "0.0.0.0" not in head


def test_setup_installs_thresher_from_the_synced_checkout() -> None:
    cfg = load_cluster()
    checkout = next(remote for remote, local in cfg["file_mounts"].items() if local == ".")
    assert any("install" in c and checkout in c for c in cfg["setup_commands"])
    assert not any("head" in key and "setup" in key for key in cfg)  # every node alike


# --------------------------------------------------------------------------------------------
# docs/cluster.md against the code
# --------------------------------------------------------------------------------------------


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOCS, flags=re.S)


def test_docs_config_plans_with_the_placement_it_describes(tmp_path: Path) -> None:
    (block,) = code_blocks("yaml")
    plan = make_plan(load_config(yaml.safe_load(block)))
    res = plan.config.resources
    assert plan.config.run.out.startswith("/")  # absolute: the job's working dir is temporary
    assert (res.gpus_per_trainer, len(plan.trainers)) == (0.25, 8)  # four trainers per GPU
    cluster = load_cluster()["available_node_types"]
    declared = {r for node in cluster.values() for r in node["resources"]}
    assert {res.harvest_node_resource, res.train_node_resource} <= declared


def test_docs_commands_are_the_launcher_s_and_thresher_s() -> None:
    commands = []
    for block in code_blocks("bash"):
        joined = block.replace("\\\n", " ")
        commands += [line.split("#")[0].strip() for line in joined.splitlines()]
    commands = [c for c in commands if c]
    for needed in ("ray get-auth-token --generate", "ray up cluster.yaml",
                   "ray dashboard cluster.yaml", "ray job submit", "ray rsync-down cluster.yaml",
                   "ray down cluster.yaml"):
        assert any(c.startswith(needed) for c in commands), needed
    thresher_commands = [c[c.index("thresher "):] for c in commands if "thresher " in c
                         and not c.startswith(("uv ", "pip "))]
    assert any("--resume" in c for c in thresher_commands)
    for command in thresher_commands:  # each parses with thresher's own command line
        _parser().parse_args(shlex.split(command)[1:])
