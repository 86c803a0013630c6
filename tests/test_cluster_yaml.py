"""cluster.yaml has what the Ray cluster launcher needs, checked without contacting any cloud."""

import os
import re

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load():
    with open(os.path.join(ROOT, "cluster.yaml")) as f:
        return yaml.safe_load(f)


def pinned_ray() -> str:
    text = open(os.path.join(ROOT, "pyproject.toml")).read()
    return re.search(r'"ray\[[^\]]*\]==([0-9.]+)"', text).group(1)


def test_launcher_keys_and_node_types():
    c = load()
    for key in ("cluster_name", "max_workers", "provider", "auth", "available_node_types", "head_node_type",
                "setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in c, key
    assert c["provider"]["type"] == "aws" and c["provider"]["region"]
    types = c["available_node_types"]
    head = types[c["head_node_type"]]
    assert head["max_workers"] == 0 and head["resources"].get("GPU", 0) == 0  # a CPU head
    gpu_types = [t for n, t in types.items() if t["resources"].get("GPU", 0) > 0]
    assert gpu_types and all(t["min_workers"] <= t["max_workers"] for t in gpu_types)
    assert sum(t["max_workers"] for t in gpu_types) <= c["max_workers"]
    for t in types.values():
        assert t["node_config"]["InstanceType"] and "IamInstanceProfile" in t["node_config"]  # S3 via the role


def test_image_matches_the_pinned_ray_and_is_not_ray_ml():
    c = load()
    version = pinned_ray()
    for key in ("image", "head_image"):
        image = c["docker"][key]
        assert image.startswith(f"rayproject/ray:{version}-"), image
        assert "ray-ml" not in image
    assert c["docker"]["image"].endswith("-gpu")


def test_setup_installs_raycat_and_starts_ray():
    c = load()
    assert any("pip install" in cmd and "/home/ray/raycat" in cmd for cmd in c["setup_commands"])
    assert "." in c["file_mounts"].values()
    assert any(cmd.startswith("ray start --head") for cmd in c["head_start_ray_commands"])
    assert any("ray start --address=$RAY_HEAD_IP" in cmd for cmd in c["worker_start_ray_commands"])


# ---- k8s/rayjob.yaml: the same cluster as a KubeRay RayJob ------------------------------------

def rayjob():
    with open(os.path.join(ROOT, "k8s", "rayjob.yaml")) as f:
        return yaml.safe_load(f)


def test_the_rayjob_is_a_kuberay_job_that_cleans_up_after_itself():
    j = rayjob()
    assert j["apiVersion"] == "ray.io/v1" and j["kind"] == "RayJob"
    spec = j["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["rayClusterSpec"]["rayVersion"] == pinned_ray()


def test_the_rayjob_matches_cluster_yaml_images_and_resources():
    c, spec = load(), rayjob()["spec"]["rayClusterSpec"]
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == c["docker"]["head_image"]
    head_type = c["available_node_types"][c["head_node_type"]]
    assert int(head["resources"]["limits"]["cpu"]) == head_type["resources"]["CPU"]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    gpu_types = {(t["resources"]["CPU"], t["resources"]["GPU"]) for t in c["available_node_types"].values()
                 if t["resources"].get("GPU", 0) > 0}
    for group in spec["workerGroupSpecs"]:
        worker = group["template"]["spec"]["containers"][0]
        assert worker["image"] == c["docker"]["image"]
        limits = worker["resources"]["limits"]
        assert (int(limits["cpu"]), int(limits["nvidia.com/gpu"])) in gpu_types
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_the_rayjob_pins_raycat_s_torch_and_its_entrypoint_parses_with_raycat_s_cli():
    import shlex

    from raycat.cli import parse_config

    spec = rayjob()["spec"]
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    pyproject = open(os.path.join(ROOT, "pyproject.toml")).read()
    for pin in ("torch==", "torchvision=="):
        pinned = re.search(rf'"({re.escape(pin)}[0-9.]+)"', pyproject).group(1)
        assert pinned in env["pip"], pinned
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", "jobs/train.py"] and os.path.exists(os.path.join(ROOT, argv[1]))
    command, cfg = parse_config(["train", *argv[2:]])
    assert command == "train" and cfg.resources.gpu and cfg.data.startswith("s3://") and cfg.out.startswith("s3://")
