"""cluster.yaml has what the Ray cluster launcher needs, checked without contacting any cloud."""

import os
import re
import shlex
import tomllib

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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


def test_ray_up_accepts_the_file():
    """What `ray up` does before it contacts AWS: merge the provider's defaults, then validate the
    result against Ray's own schema (an unknown or misspelt key, or a wrong type, fails here)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(load()))


# The user of the rayproject/ray images; Ray looks for its token in ~/.ray/auth_token.
CONTAINER_HOME = "/home/ray"


def docker_env(c: dict) -> dict:
    """The environment `run_options` give every process in the nodes' containers."""
    args = shlex.split(" ".join(c["docker"].get("run_options", [])))
    pairs = [args[i + 1] for i, a in enumerate(args) if a in ("-e", "--env")]
    pairs += [a.split("=", 1)[1] for a in args if a.startswith("--env=")]
    return dict(p.split("=", 1) for p in pairs)


def test_every_node_starts_ray_with_token_auth_and_the_token():
    """Ray 2.60's `ray start` turns token auth on only with RAY_AUTH_MODE=token or a token file
    already there; a worker then joins only with the head's token. So every `ray start` must see
    RAY_AUTH_MODE=token and every node the same token file, copied from the launching machine
    (https://docs.ray.io/en/latest/ray-security/token-auth.html, "Ray clusters on remote virtual
    machines"; in Docker, file_mounts land inside the container)."""
    c = load()
    env = docker_env(c)
    for cmd in c["head_start_ray_commands"] + c["worker_start_ray_commands"]:
        if "ray start" in cmd:
            inline = dict(w.split("=", 1) for w in shlex.split(cmd.split("ray start")[0]) if "=" in w)
            assert {**env, **inline}.get("RAY_AUTH_MODE") == "token", cmd
    token = env.get("RAY_AUTH_TOKEN_PATH", f"{CONTAINER_HOME}/.ray/auth_token")
    assert c["file_mounts"].get(token) == "~/.ray/auth_token"  # where `ray get-auth-token --generate` writes


def test_the_copy_of_the_repository_leaves_out_git_and_what_git_ignores():
    """file_mounts rsyncs the repository to every node: .venv (gigabytes) and .git must stay home."""
    c = load()
    assert "**/.git/**" in c["rsync_exclude"] and ".gitignore" in c["rsync_filter"]
    ignored = open(os.path.join(ROOT, ".gitignore")).read().split()
    assert ".venv/" in ignored


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


def test_the_rayjob_s_gpu_workers_autoscale_as_cluster_yaml_s_do():
    """Without enableInTreeAutoscaling KubeRay runs `replicas` pods whatever the job asks for and
    ignores min/maxReplicas (KubeRay Autoscaling, "Enabling autoscaling"); `replicas` starts at
    minReplicas, as that guide advises, and the autoscaler moves it from there."""
    c, spec = load(), rayjob()["spec"]["rayClusterSpec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] == 60 * c["idle_timeout_minutes"]
    node_type = {"gpu": "gpu_g6", "gpu-spot": "gpu_g6_spot"}
    assert sorted(g["groupName"] for g in spec["workerGroupSpecs"]) == sorted(node_type)
    for group in spec["workerGroupSpecs"]:
        t = c["available_node_types"][node_type[group["groupName"]]]
        assert group["replicas"] == group["minReplicas"] == t["min_workers"]
        assert group["maxReplicas"] == t["max_workers"]


def test_a_preemptible_group_beside_the_on_demand_one_and_an_elastic_example():
    c, job = load(), rayjob()
    types = c["available_node_types"]
    assert "InstanceMarketOptions" not in types["gpu_g6"]["node_config"]
    assert types["gpu_g6_spot"]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert types["gpu_g6_spot"]["resources"] == types["gpu_g6"]["resources"]
    spot = next(g for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == "gpu-spot")
    assert spot["template"]["spec"]["nodeSelector"] == {"eks.amazonaws.com/capacityType": "SPOT"}
    from raycat.cli import parse_config

    args = job["spec"]["entrypoint"].split()[2:]
    _, cfg = parse_config(["train", *args])
    assert cfg.resources.workers.elastic and cfg.resources.workers.max <= sum(
        t["max_workers"] for n, t in types.items() if t["resources"].get("GPU"))


def test_the_rayjob_turns_token_auth_on():
    """Ray 2.60 leaves token auth off on KubeRay's pods; KubeRay (>= 1.5.1) makes the token and
    sets it on every Ray container with authOptions."""
    assert rayjob()["spec"]["rayClusterSpec"]["authOptions"]["mode"] == "token"


def test_the_rayjob_installs_every_raycat_dependency_as_pyproject_pins_it():
    """The job's pip list is pyproject.toml's [project].dependencies, name and specifier each, and
    nothing else; Ray itself comes from the image (a runtime env's pip installs on top of the
    image's Python, and a second Ray there would not be the one running the cluster)."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        wanted = [Requirement(r) for r in tomllib.load(f)["project"]["dependencies"]]
    spec = rayjob()["spec"]
    pip = [Requirement(r) for r in yaml.safe_load(spec["runtimeEnvYAML"])["pip"]]
    by_name = {canonicalize_name(r.name): r for r in pip}
    assert len(by_name) == len(pip), "a package listed twice"
    for req in wanted:
        name = canonicalize_name(req.name)
        if name == "ray":
            assert name not in by_name
            pin = str(next(iter(req.specifier))).removeprefix("==")
            assert spec["rayClusterSpec"]["rayVersion"] == pin
            for group in [spec["rayClusterSpec"]["headGroupSpec"], *spec["rayClusterSpec"]["workerGroupSpecs"]]:
                assert group["template"]["spec"]["containers"][0]["image"].startswith(f"rayproject/ray:{pin}-")
            continue
        assert name in by_name, f"{req} is in pyproject.toml, not in the RayJob's pip list"
        got = by_name.pop(name)
        assert (got.specifier, got.extras, got.marker) == (req.specifier, req.extras, req.marker), (str(got), str(req))
    assert not by_name, f"the RayJob installs what pyproject.toml does not list: {sorted(map(str, by_name.values()))}"


def test_the_rayjob_s_entrypoint_parses_with_raycat_s_cli():
    from raycat.cli import parse_config

    spec = rayjob()["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", "jobs/train.py"] and os.path.exists(os.path.join(ROOT, argv[1]))
    command, cfg = parse_config(["train", *argv[2:]])
    assert command == "train" and cfg.resources.gpu and cfg.data.startswith("s3://") and cfg.out.startswith("s3://")
