"""Run a thresher config on a two-node `ray.cluster_utils.Cluster` and record where it ran.

Started by tests/test_multinode.py in a subprocess of its own: a Cluster cannot share a process
with the test session's Ray. The head is the harvest node (it declares `harvest_node` and one
GPU), the second node the train node (`train_node` and one GPU). The GPUs are logical only:
Ray schedules against them and sets CUDA_VISIBLE_DEVICES; torch, seeing no CUDA device, runs on
the CPU.

    python -m tests.multinode_main CONFIG.json OUT.json TEMP_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MIB = 2**20


def main(config: Path, out: Path, temp_dir: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    import thresher

    node = {"num_cpus": 1, "num_gpus": 1, "object_store_memory": 200 * MIB,
            "temp_dir": str(temp_dir)}
    cluster = Cluster(initialize_head=True, head_node_args={
        **node, "resources": {"harvest_node": 1}, "include_dashboard": False})
    train_node = cluster.add_node(**node, resources={"train_node": 1})
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        run_dir = thresher.run(json.loads(config.read_text()), progress=False)
        out.write_text(json.dumps({"run_dir": str(run_dir),
                                   "harvest_node": cluster.head_node.node_id,
                                   "train_node": train_node.node_id}))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
