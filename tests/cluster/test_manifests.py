"""Static checks of the cluster/ manifests against the documented schemas (no cluster, no Ray start).

Sources of the key lists below:
- KubeRay CRD API reference, ray.io/v1 (https://docs.ray.io/en/master/cluster/kubernetes/references/api.html,
  fields of KubeRay v1.6/1.7) and the Go types it is generated from,
  ray-project/kuberay:ray-operator/apis/ray/v1/raycluster_types.go and rayjob_types.go. A field whose json tag
  has no ``omitempty`` is required: RayClusterSpec.headGroupSpec; HeadGroupSpec.template and .rayStartParams
  (optional only from KubeRay 1.4); WorkerGroupSpec.groupName, .minReplicas, .maxReplicas, .rayStartParams,
  .template. rayStartParams is map[string]string, so every value must be a string.
- Token auth: ``spec.authOptions: {mode: token}``, KubeRay >= 1.5.1 with rayVersion >= 2.52.0
  (https://docs.ray.io/en/latest/cluster/kubernetes/user-guides/kuberay-auth.html; KubeRay v1.5.1 notes).
- RayJob fields and the sample ray-operator/config/samples/ray-job.sample.yaml; submission modes from
  rayjob_types.go (K8sJobMode, HTTPMode, InteractiveMode).
- VM cluster launcher: ray/autoscaler/ray-schema.json shipped inside the installed ray package, and
  https://docs.ray.io/en/latest/cluster/vms/references/ray-cluster-configuration.html.
- Runtime env: ray.runtime_env.RuntimeEnv (constructed here; ray is imported, never initialised).
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
RAYCLUSTER = CLUSTER / "kuberay" / "raycluster.yaml"
RAYJOB = CLUSTER / "kuberay" / "rayjob.yaml"
LAUNCHER = CLUSTER / "aws" / "cluster.yaml"
RUNTIME_ENV = CLUSTER / "runtime_env.yaml"
DOCKERFILE = CLUSTER / "docker" / "Dockerfile"
DOCS = ROOT / "docs" / "cluster.md"

IMAGE = "ghcr.io/YOUR_ORG/afov-ray:0.1.0-cu126"
JOBS = {"prepare", "teacher", "pair", "tmp", "distill", "finetune", "predict", "afi", "evaluate", "sweep", "demo"}

# --- documented keys (see module docstring) ----------------------------------------------------------------
RAYCLUSTER_SPEC_KEYS = {
    "suspend", "managedBy", "autoscalerOptions", "headServiceAnnotations", "enableInTreeAutoscaling",
    "gcsFaultToleranceOptions", "headGroupSpec", "rayVersion", "workerGroupSpecs", "authOptions",
}
HEAD_GROUP_KEYS = {"template", "headService", "enableIngress", "rayStartParams", "serviceType"}
HEAD_GROUP_REQUIRED = {"template", "rayStartParams"}
WORKER_GROUP_KEYS = {
    "suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
    "rayStartParams", "template", "scaleStrategy", "numOfHosts",
}
WORKER_GROUP_REQUIRED = {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template"}
AUTOSCALER_OPTION_KEYS = {
    "resources", "image", "imagePullPolicy", "securityContext", "idleTimeoutSeconds", "upscalingMode",
    "env", "envFrom", "volumeMounts",
}
AUTH_OPTION_KEYS = {"mode", "secretName", "enableK8sTokenAuth"}
RAYJOB_SPEC_KEYS = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
    "clusterSelector", "submitterConfig", "managedBy", "deletionPolicy", "entrypoint", "runtimeEnvYAML",
    "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus", "entrypointNumGpus",
    "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend",
}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode"}

# Environment variables that carry credentials: they must come from a Secret, never a literal value.
SECRET_ENV = re.compile(r"(ACCESS_KEY|SECRET|TOKEN|PASSWORD|USERNAME|TRACKING_URI)")


def load(path: Path) -> dict:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert len(docs) == 1, f"{path}: expected one YAML document, got {len(docs)}"
    return docs[0]


def dig(obj, dotted: str):
    """``dig(d, "spec.workerGroupSpecs.0.template")``; raises KeyError naming the missing part."""
    cur = obj
    for part in dotted.split("."):
        if isinstance(cur, list):
            cur = cur[int(part)]
        elif isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            raise KeyError(f"missing {dotted!r} (at {part!r})")
    return cur


_QUANTITY = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9,
             "T": 10**12}


def quantity_bytes(q) -> int:
    """Kubernetes resource quantity (``48Gi``, ``16G``, ``2147483648``) in bytes."""
    m = re.fullmatch(r"(\d+)([KMGT]i|[kMGT])?", str(q))
    assert m, f"not a byte quantity: {q!r}"
    return int(m.group(1)) * _QUANTITY[m.group(2) or ""]


def pod_groups(cluster_spec: dict):
    """(name, group spec) for the head and every worker group."""
    yield "head", cluster_spec["headGroupSpec"]
    for g in cluster_spec["workerGroupSpecs"]:
        yield g["groupName"], g


@pytest.fixture(scope="module")
def raycluster():
    return load(RAYCLUSTER)


@pytest.fixture(scope="module")
def rayjob():
    return load(RAYJOB)


@pytest.fixture(scope="module")
def launcher():
    return load(LAUNCHER)


@pytest.fixture(scope="module")
def runtime_env():
    return load(RUNTIME_ENV)


@pytest.fixture(scope="module")
def ray_version():
    import ray

    return ray.__version__


# --- every file -----------------------------------------------------------------------------------------

def test_every_yaml_parses():
    paths = sorted(CLUSTER.rglob("*.yaml"))
    assert {RAYCLUSTER, RAYJOB, LAUNCHER, RUNTIME_ENV} <= set(paths)
    for p in paths:
        assert isinstance(load(p), dict), p


# --- KubeRay RayCluster -----------------------------------------------------------------------------------

def check_cluster_spec(spec: dict, where: str, ray_version: str) -> None:
    assert set(spec) <= RAYCLUSTER_SPEC_KEYS, f"{where}: unknown keys {set(spec) - RAYCLUSTER_SPEC_KEYS}"
    assert spec["rayVersion"] == ray_version, f"{where}: rayVersion {spec['rayVersion']} != ray {ray_version}"
    assert spec["authOptions"]["mode"] == "token" and set(spec["authOptions"]) <= AUTH_OPTION_KEYS
    assert spec["enableInTreeAutoscaling"] is True
    assert set(spec["autoscalerOptions"]) <= AUTOSCALER_OPTION_KEYS

    head = spec["headGroupSpec"]
    assert HEAD_GROUP_REQUIRED <= set(head) <= HEAD_GROUP_KEYS, f"{where}: head group keys {sorted(head)}"
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert head["rayStartParams"]["num-cpus"] == "0", "no work may be scheduled on the head"

    assert spec["workerGroupSpecs"], f"{where}: no worker group"
    for g in spec["workerGroupSpecs"]:
        missing = WORKER_GROUP_REQUIRED - set(g)
        assert not missing, f"{where}: worker group {g.get('groupName')} lacks {missing}"
        assert set(g) <= WORKER_GROUP_KEYS, f"{where}: unknown worker-group keys {set(g) - WORKER_GROUP_KEYS}"
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        assert g["maxReplicas"] > g["minReplicas"], "autoscaling needs room between min and max"

    for name, group in pod_groups(spec):
        for k, v in group["rayStartParams"].items():
            assert isinstance(v, str), f"{where}/{name}: rayStartParams.{k}={v!r} must be a string"
        pod = group["template"]["spec"]
        containers = pod["containers"]
        c = containers[0]
        assert c["name"] and c["image"] == IMAGE, f"{where}/{name}: image {c.get('image')}"
        assert "ray stop" in " ".join(dig(c, "lifecycle.preStop.exec.command")), f"{where}/{name}: preStop"
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][part]), f"{where}/{name}: resources.{part}"
        # /dev/shm: a memory-backed emptyDir with a size limit that holds the object store and fits the pod.
        shm_mounts = [m for m in c["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        assert len(shm_mounts) == 1, f"{where}/{name}: /dev/shm mount"
        vol = next(v for v in pod["volumes"] if v["name"] == shm_mounts[0]["name"])
        assert vol["emptyDir"]["medium"] == "Memory"
        shm = quantity_bytes(vol["emptyDir"]["sizeLimit"])
        store = int(group["rayStartParams"]["object-store-memory"])
        mem = quantity_bytes(c["resources"]["limits"]["memory"])
        assert 0 < store <= shm < mem, f"{where}/{name}: object store {store} <= shm {shm} < memory {mem}"


def test_raycluster_required_fields(raycluster, ray_version):
    assert raycluster["apiVersion"] == "ray.io/v1"
    assert raycluster["kind"] == "RayCluster"
    assert raycluster["metadata"]["name"]
    check_cluster_spec(raycluster["spec"], "raycluster", ray_version)


def test_gpu_only_on_workers(raycluster):
    spec = raycluster["spec"]
    head = dig(spec, "headGroupSpec.template.spec.containers.0.resources")
    assert "nvidia.com/gpu" not in head.get("limits", {}) and "nvidia.com/gpu" not in head.get("requests", {})
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if "nvidia.com/gpu" in dig(g, "template.spec.containers.0.resources.limits")]
    assert gpu_groups, "no worker group with nvidia.com/gpu limits"
    for g in gpu_groups:
        res = dig(g, "template.spec.containers.0.resources")
        n = int(res["limits"]["nvidia.com/gpu"])
        assert n >= 1
        # Kubernetes: extended resources cannot be overcommitted, requests must equal limits when given.
        assert int(res["requests"].get("nvidia.com/gpu", n)) == n
        tolerations = dig(g, "template.spec.tolerations")
        assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)


def test_secrets_come_from_secret_refs(raycluster):
    for name, group in pod_groups(raycluster["spec"]):
        env = {e["name"]: e for e in dig(group, "template.spec.containers.0.env")}
        for required in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI"):
            assert required in env, f"{name}: env {required}"
        assert "MLFLOW_TRACKING_TOKEN" in env or {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= set(env)
        assert env["AWS_ENDPOINT_URL"]["valueFrom"]["secretKeyRef"]["optional"] is True
        for var, e in env.items():
            if SECRET_ENV.search(var):
                assert "value" not in e, f"{name}: {var} is inlined"
                ref = e["valueFrom"]["secretKeyRef"]
                assert ref["name"] and ref["key"], f"{name}: {var} secretKeyRef"
    # Head (job driver) and workers see the same settings.
    groups = dict(pod_groups(raycluster["spec"]))
    envs = [dig(g, "template.spec.containers.0.env") for g in groups.values()]
    assert all(e == envs[0] for e in envs)


# --- KubeRay RayJob ---------------------------------------------------------------------------------------

def test_rayjob_fields(rayjob, raycluster, ray_version):
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob" and rayjob["metadata"]["name"]
    spec = rayjob["spec"]
    assert set(spec) <= RAYJOB_SPEC_KEYS, f"unknown RayJob keys {set(spec) - RAYJOB_SPEC_KEYS}"
    assert spec["entrypoint"] == "python jobs/tmp.py --config configs/nuscenes/tmp.yaml"
    assert spec["submissionMode"] in SUBMISSION_MODES and spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    assert isinstance(spec["activeDeadlineSeconds"], int) and spec["activeDeadlineSeconds"] > 0
    # Exactly one way to get a cluster; ours creates one equal to raycluster.yaml.
    assert "clusterSelector" not in spec
    check_cluster_spec(spec["rayClusterSpec"], "rayjob", ray_version)
    assert spec["rayClusterSpec"] == raycluster["spec"], "rayjob.yaml rayClusterSpec drifted from raycluster.yaml"


def test_rayjob_runtime_env_is_valid_and_secret_free(rayjob, tmp_path):
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    # working_dir is the code directory inside the image (the submitter pod runs the head image).
    workdir = re.search(r"^WORKDIR (\S+)$", DOCKERFILE.read_text(), flags=re.M).group(1)
    assert env["working_dir"] == workdir
    # RuntimeEnv checks that a local working_dir exists: validate the rest with a directory that does.
    RuntimeEnv(**{**env, "working_dir": str(tmp_path)})
    assert not {"pip", "uv", "conda"} & set(env), "dependencies belong in the image"
    assert not any(SECRET_ENV.search(k) for k in env.get("env_vars", {}))


# --- VM cluster launcher ----------------------------------------------------------------------------------

def test_launcher_validates_against_ray_schema(launcher):
    import ray

    jsonschema = pytest.importorskip("jsonschema")
    schema_path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    if not schema_path.exists():
        pytest.skip(f"{schema_path} not shipped by this ray")
    schema = json.loads(schema_path.read_text())
    jsonschema.validate(launcher, schema)
    # The schema must actually reject a broken config (so the check above is not vacuous).
    broken = {k: v for k, v in launcher.items() if k != "provider"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_launcher_node_types(launcher):
    types = launcher["available_node_types"]
    assert launcher["head_node_type"] in types
    assert launcher["provider"]["type"] == "aws" and launcher["provider"]["region"]
    assert launcher["auth"]["ssh_user"]
    assert launcher["docker"]["image"] == IMAGE
    for name, t in types.items():
        assert isinstance(t["resources"], dict), f"{name}: resources"
        assert t["node_config"]["InstanceType"], f"{name}: InstanceType"
        if name != launcher["head_node_type"]:
            assert 0 <= t["min_workers"] <= t["max_workers"] <= launcher["max_workers"], name
    assert types[launcher["head_node_type"]]["resources"].get("CPU") == 0
    gpu = {n: t["resources"]["GPU"] for n, t in types.items() if t["resources"].get("GPU", 0) > 0}
    assert len(gpu) >= 2, f"GPU node types: {gpu}"
    assert {"g5.12xlarge", "p4d.24xlarge"} <= {types[n]["node_config"]["InstanceType"] for n in gpu}


def test_launcher_commands(launcher, ray_version):
    head = " ".join(launcher["head_start_ray_commands"])
    worker = " ".join(launcher["worker_start_ray_commands"])
    assert "ray start --head" in head and "--num-cpus=0" in head and "--dashboard-host=0.0.0.0" in head
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "--address=$RAY_HEAD_IP:6379" in worker
    for cmds in (head, worker):
        assert re.search(r"--object-store-memory=\d+", cmds)
    assert launcher["idle_timeout_minutes"] > 0
    assert any(ray_version in c for c in launcher["setup_commands"])
    # The token and the env file are copied from the user's machine, never committed.
    assert launcher["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "-e RAY_AUTH_MODE=token" in launcher["docker"]["run_options"]


# --- runtime env for `ray job submit` ---------------------------------------------------------------------

def test_runtime_env_constructs(runtime_env):
    from ray.runtime_env import RuntimeEnv

    env = RuntimeEnv(**runtime_env)
    assert env["working_dir"] == "."
    assert not {"pip", "uv", "conda"} & set(runtime_env)
    assert not any(SECRET_ENV.search(k) for k in runtime_env.get("env_vars", {}))


def test_runtime_env_excludes_data(runtime_env, tmp_path):
    """Package a fake checkout with Ray's own packer: code goes in, data/outputs/.venv stay out."""
    from ray._private.runtime_env.packaging import create_package

    src = tmp_path / "repo"
    files = ["afov_ray/x.py", "jobs/tmp.py", "configs/nuscenes/tmp.yaml",
             "data/nuscenes/a.bin", "data/nuscenes/v1.0-mini/scene.json",
             "outputs/run/ckpt.pt", "outputs/run/metrics.json", "runs/x/result.json", "mlruns/0/meta.yaml",
             ".venv/lib/site.py", "afov_ray/__pycache__/x.cpython-311.pyc", "shard.parquet"]
    for f in files:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        (src / f).write_text("x")
    zpath = tmp_path / "pkg.zip"
    create_package(str(src), zpath, include_gitignore=False, excludes=runtime_env["excludes"])
    names = {n for n in zipfile.ZipFile(zpath).namelist() if not n.endswith("/")}
    assert names == {"afov_ray/x.py", "jobs/tmp.py", "configs/nuscenes/tmp.yaml"}, names


# --- Dockerfile -------------------------------------------------------------------------------------------

def dockerfile_args(text: str) -> dict:
    return dict(re.findall(r"^ARG (\w+)=\"?([^\"\n]*)\"?$", text, flags=re.M))


def test_dockerfile_pins(ray_version):
    text = DOCKERFILE.read_text()
    args = dockerfile_args(text)
    assert args["RAY_VERSION"] == ray_version
    base = re.search(r"^FROM (\S+) AS deps$", text, flags=re.M).group(1)
    resolved = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    assert resolved == f"rayproject/ray:{ray_version}-py311-gpu"
    assert re.fullmatch(r"rayproject/ray:\d+\.\d+\.\d+-py3\d+-(gpu|cpu|cu\d+)", resolved)
    assert re.search(r"spconv-cu12\d", text)
    assert args["WITH_MINKOWSKI"] == "0", "MinkowskiEngine must stay opt-in"
    assert args["VARIANT"] == "gpu" and '"$VARIANT" = "cpu"' in text
    install_pin = re.search(r"torch==([\d.]+)", (ROOT / "install.sh").read_text()).group(1)
    assert args["TORCH_VERSION"] == install_pin
    # Every COPY source exists in the build context (the repository root).
    for src in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, flags=re.M):
        for s in src.split():
            assert (ROOT / s).exists(), f"COPY source {s} missing"


# --- no credentials anywhere ------------------------------------------------------------------------------

_LEAKS = [
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),                                  # AWS access key id
    re.compile(r"(?i)aws_secret_access_key\s*[:=]\s*['\"]?[A-Za-z0-9/+=]{40}"),  # AWS secret key
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),                               # GitHub tokens
    re.compile(r"(?i)(token|password|secret)\w*\s*[:=]\s*['\"](?!\$)[^'\"\s.]{12,}['\"]"),  # quoted literal, not $VAR
]


def find_leaks(text: str) -> list[str]:
    return [m.group(0) for rx in _LEAKS for m in rx.finditer(text)]


def test_leak_patterns_catch_examples():
    fake_id = "AKIA" + "IOSFODNN7" + "EXAMPLE"
    fake_secret = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY"
    assert find_leaks(f"AWS_ACCESS_KEY_ID={fake_id}")
    assert find_leaks(f"AWS_SECRET_ACCESS_KEY: {fake_secret}")
    assert find_leaks('auth_token: "' + "s3cr3t" * 4 + '"')
    assert not find_leaks("AWS_ACCESS_KEY_ID=...  secretKeyRef: {name: afov-s3, key: AWS_SECRET_ACCESS_KEY}")
    assert not find_leaks('--from-literal=MLFLOW_TRACKING_TOKEN="$MLFLOW_TRACKING_TOKEN"')


def test_no_literal_credentials():
    files = [p for p in CLUSTER.rglob("*") if p.is_file()] + [DOCS]
    for p in files:
        leaks = find_leaks(p.read_text())
        assert not leaks, f"{p.relative_to(ROOT)} contains what looks like a credential: {leaks}"


# --- docs -------------------------------------------------------------------------------------------------

def test_docs_reference_known_jobs_and_auth():
    text = DOCS.read_text()
    used = set(re.findall(r"jobs/(\w+)\.py", text))
    assert used and used <= JOBS, f"unknown job scripts in docs: {used - JOBS}"
    for needle in ("RAY_AUTH_TOKEN", "ray job submit", "ray start --head", "storage_path", "MLFLOW_TRACKING_URI",
                   "cluster/kuberay/rayjob.yaml", "cluster/aws/cluster.yaml", "cluster/runtime_env.yaml"):
        assert needle in text, needle
