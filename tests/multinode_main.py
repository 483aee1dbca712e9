"""Run a thresher config on a `ray.cluster_utils.Cluster` and record where it ran.

Started by tests/distributed/test_multinode.py in a subprocess of its own: a Cluster cannot
share a process with the test session's Ray. The head is the harvest node (it declares
`harvest_node` and one GPU), each further node a train node (`train_node` and one GPU). The
GPUs are logical only: Ray schedules against them and sets CUDA_VISIBLE_DEVICES; torch,
seeing no CUDA device, runs on the CPU. Recorded per node: the bytes its object store has
created, which counts each object pulled in from another node once.

    python -m tests.multinode_main CONFIG.json OUT.json TEMP_DIR [TRAIN_NODES]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MIB = 2**20


def created_bytes(node: dict) -> int:
    """Bytes the node's object store has created: its own objects and those it pulled."""
    from ray._private.internal_api import node_stats

    reply = node_stats(node["NodeManagerAddress"], node["NodeManagerPort"],
                       include_memory_info=False)
    return int(reply.store_stats.cumulative_created_bytes)


def main(config: Path, out: Path, temp_dir: Path, train_nodes: int = 1) -> None:
    import ray
    from ray.cluster_utils import Cluster

    import thresher

    node = {"num_cpus": 1, "num_gpus": 1, "object_store_memory": 200 * MIB,
            "temp_dir": str(temp_dir)}
    cluster = Cluster(initialize_head=True, head_node_args={
        **node, "resources": {"harvest_node": 1}, "include_dashboard": False})
    trainers = [cluster.add_node(**node, resources={"train_node": 1})
                for _ in range(train_nodes)]
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        run_dir = thresher.run(json.loads(config.read_text()), progress=False)
        out.write_text(json.dumps({
            "run_dir": str(run_dir), "harvest_node": cluster.head_node.node_id,
            "train_node": trainers[0].node_id, "train_nodes": [t.node_id for t in trainers],
            "created_bytes": {n["NodeID"]: created_bytes(n) for n in ray.nodes()
                              if n["Alive"]}}))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]),
         int(sys.argv[4]) if len(sys.argv) > 4 else 1)
