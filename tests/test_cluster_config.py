"""cluster.yaml against Ray's own cluster-launcher schema and config preparation (what `ray up` runs),
offline; and the KubeRay RayJob example's consistency with it (no Kubernetes here to validate the CRD)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config  # private: what `ray up` calls

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_schema_and_config_preparation(cluster):
    jsonschema.validate(cluster, SCHEMA)
    prepared = prepare_config(copy.deepcopy(cluster))
    validate_config(prepared)
    nodes = prepared["available_node_types"]
    assert nodes[prepared["head_node_type"]]["resources"] == {"CPU": 0}  # the head runs only the driver
    gpu_types = [n["node_config"]["InstanceType"] for n in nodes.values() if n.get("max_workers", 0) > 0]
    assert gpu_types == ["g6e.xlarge", "p5.48xlarge"]
    assert any("answerkey[vllm]" in c for c in prepared["setup_commands"])


@pytest.mark.parametrize(("edit", "error"), [
    (lambda c: c["available_node_types"]["gpu_8x_h100"].update(min_worker=0), jsonschema.ValidationError),
    (lambda c: c.update(head_node_type="head_gpu"), ValueError),
    (lambda c: c["provider"].pop("type"), jsonschema.ValidationError),
])
def test_a_broken_cluster_yaml_is_rejected(cluster, edit, error):
    """The validation is not vacuous: a typo, a missing head type or a provider without a type fail."""
    broken = copy.deepcopy(cluster)
    edit(broken)
    with pytest.raises(error):
        jsonschema.validate(broken, SCHEMA)
        validate_config(prepare_config(broken))


def test_kuberay_rayjob_runs_answerkey_with_the_same_ray(cluster):
    job = yaml.safe_load((ROOT / "examples" / "kuberay_rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["entrypoint"].startswith("answerkey rl examples/math_8gpu.toml")
    assert (ROOT / "examples" / "math_8gpu.toml").exists()
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == ray.__version__ == "2.60.0"
    assert cluster["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}")
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert workers[0]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
