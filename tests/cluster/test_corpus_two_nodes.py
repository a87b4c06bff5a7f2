"""The corpus stage on a real 2-node Ray cluster (`cluster/local_cluster.sh`: a head and a second node
of one CPU each) against the embedded Ray: tasks run on both nodes, the parts written on the node
without the output directory come back to the stage process, and the files are byte-identical to a
one-worker run on the embedded Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.cluster.test_submit import SCRIPT, free_port, sh

pytestmark = pytest.mark.usefixtures("local_ray_module")  # the suite's shared Ray, for the reference

# Run in a process of its own: this one already holds the embedded Ray, and a process joins one
# cluster only. The real `run_parts` is wrapped to record each part's summary (node, who wrote it).
DRIVER = r"""
import json, sys
import ray
from pipelines.data import corpus_parts
from pipelines.execute import execute_stage
from pipelines.stages.corpus import CorpusConfig, SourceConfig
from pipelines.storage import Storage

ray.init(address=sys.argv[1], log_to_driver=False)
recorded = []
real = corpus_parts.run_parts
def recording(*args, **kwargs):
    done = real(*args, **kwargs)
    recorded.extend({"node": p["node"], "written_by_task": p["written_by_task"]} for p in done)
    return done
corpus_parts.run_parts = recording
cfg = CorpusConfig(sources=[SourceConfig(name="w", format="webdataset", path=sys.argv[2])],
                   rows_per_file=150, num_workers=2)
res = execute_stage(pipeline="t", stage="corpus", kind="corpus", key="cluster", config=cfg,
                    config_dict={}, inputs={}, storage=Storage(sys.argv[3]))
nodes = {n["NodeID"]: n["Alive"] for n in ray.nodes()}
print("RESULT " + json.dumps({"extra": res["extra"], "metrics": res["metrics"], "parts": recorded,
                              "driver_node": ray.get_runtime_context().get_node_id(),
                              "nodes": nodes}))
"""


@pytest.fixture(scope="module")
def two_nodes():
    port = free_port()
    sh(SCRIPT, "start", "--port", port, "--dashboard-port", free_port(), "--num-cpus", 1)
    try:
        sh(SCRIPT, "add-node", "--port", port, "--num-cpus", 1)
        address = f"127.0.0.1:{port}"
        deadline = time.time() + 60  # a node that `ray start` has just added takes a moment to show up
        while sh("ray", "status", "--address", address).stdout.count("node_") < 2:
            assert time.time() < deadline, "the second node never joined"
            time.sleep(1)
        yield address
    finally:
        sh(SCRIPT, "stop", "--port", port, check=False)  # only this cluster's processes


def test_corpus_stage_on_two_nodes_matches_the_embedded_run(two_nodes, tmp_path):
    from pipelines.data.corpus_synthetic import write_webdataset_corpus
    from pipelines.stages.corpus import CorpusConfig, SourceConfig
    from pipelines.storage import Storage
    from tests.pipelines.test_corpus_scale import files_of, run_stage

    write_webdataset_corpus(str(tmp_path / "w"), 1200, per_tar=150, side=16, seed=11)
    cfg = CorpusConfig(sources=[SourceConfig(name="w", format="webdataset", path=str(tmp_path / "w"))],
                       rows_per_file=150, num_workers=1)
    embedded = Storage(str(tmp_path / "embedded"))
    reference = run_stage(embedded, cfg, "one")

    proc = subprocess.run([sys.executable, "-c", DRIVER, two_nodes, str(tmp_path / "w"),
                           str(tmp_path / "cluster")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RAY_ADDRESS": two_nodes})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    run = json.loads(line[len("RESULT "):])
    assert sum(run["nodes"].values()) == 2, run["nodes"]

    # tasks ran on both nodes; the parts of the node without the output directory came back
    assert run["metrics"]["nodes"] == 2.0, run["metrics"]
    part_nodes = {p["node"] for p in run["parts"]}
    assert part_nodes <= set(run["nodes"]), (part_nodes, run["nodes"])
    sent_back = [p for p in run["parts"] if not p["written_by_task"]]
    assert sent_back and all(p["node"] != run["driver_node"] for p in sent_back), run["parts"]
    assert all(p["node"] == run["driver_node"] for p in run["parts"] if p["written_by_task"])

    # the same output as the embedded Ray with one worker, byte for byte
    assert run["extra"] == json.loads(json.dumps(reference["extra"]))
    assert reference["extra"]["counts"]["duplicates"] > 0
    expected = files_of(embedded.output_dir("t", "corpus", "one"))
    assert len(expected) > 8
    assert files_of(str(tmp_path / "cluster" / "t" / "corpus" / "cluster")) == expected
