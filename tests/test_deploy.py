"""deploy/: the Kubernetes manifests and image the launcher relies on.

No container engine or cluster runs here, so these tests parse the files and
check the fields that must agree with each other and with the code: names,
ports, DNS names in --workers, the flags of both programs, the volume.
"""

import os
import re

import pytest
import yaml

from conftest import REPO_ROOT
from tffpipe import cli
from tffpipe import worker

K8S = os.path.join(REPO_ROOT, "deploy", "kubernetes")


def _kustomization_objects(folder: str) -> dict:
    """{(kind, name): object} of every manifest `folder`'s kustomization lists (and it lists them all)."""
    with open(os.path.join(folder, "kustomization.yaml")) as f:
        kustomization = yaml.safe_load(f)
    assert sorted(kustomization["resources"]) == sorted(
        n for n in os.listdir(folder) if n.endswith(".yaml") and n != "kustomization.yaml"
    )
    found = {}
    for name in kustomization["resources"]:
        with open(os.path.join(folder, name)) as f:
            for doc in yaml.safe_load_all(f):
                found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


@pytest.fixture(scope="module")
def objects():
    return _kustomization_objects(K8S)


def _flag_value(args, name):
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    assert len(values) == 1, f"--{name} should be given once in {args}"
    return values[0]


def test_workers_get_stable_names_behind_a_headless_service(objects):
    service = objects[("Service", "tffpipe-worker")]
    sts = objects[("StatefulSet", "tffpipe-worker")]
    assert service["spec"]["clusterIP"] == "None"
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()

    (container,) = sts["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[:3] == ["python", "-m", "tffpipe.worker"]
    port = int(_flag_value(command[3:], "port"))
    assert [p["containerPort"] for p in container["ports"]] == [port]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [port]
    assert container["readinessProbe"]["tcpSocket"]["port"] == port
    # Every flag the pod passes exists in the worker program.
    for arg in command[3:]:
        assert re.fullmatch(r"--\w+=\S+", arg) and arg[2:].split("=")[0] in worker.FLAGS, arg


def test_the_launcher_lists_every_worker_pod_by_its_dns_name(objects):
    service = objects[("Service", "tffpipe-worker")]
    sts = objects[("StatefulSet", "tffpipe-worker")]
    job = objects[("Job", "tffpipe-train")]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "tffpipe.train"]
    args = container["args"]
    assert _flag_value(args, "runtime") == "remote"
    port = service["spec"]["ports"][0]["port"]
    expected = [
        f"{sts['metadata']['name']}-{i}.{service['metadata']['name']}:{port}" for i in range(sts["spec"]["replicas"])
    ]
    assert _flag_value(args, "workers").split(",") == expected
    assert container["image"] == sts["spec"]["template"]["spec"]["containers"][0]["image"]


def test_the_run_lives_on_a_persistent_volume_and_resumes_on_restart(objects):
    job = objects[("Job", "tffpipe-train")]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    root = _flag_value(container["args"], "root_dir")
    (mount,) = [m for m in container["volumeMounts"] if root.startswith(m["mountPath"])]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert ("PersistentVolumeClaim", claim) in objects
    # A failed launcher is restarted and the same command resumes the run.
    assert pod["restartPolicy"] == "OnFailure" and job["spec"]["backoffLimit"] >= 1


def test_the_launcher_args_make_a_valid_run_config(objects):
    job = objects[("Job", "tffpipe-train")]
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    # The launcher's own flags, parsed as it parses them.
    cfg = cli.parse(["train", *args])
    assert cfg.runtime.name == "remote"
    assert ",".join(cfg.runtime.remote.workers) == _flag_value(args, "workers")
    assert cfg.runtime.remote.worker_wait_sec == float(_flag_value(args, "worker_wait_sec"))


def test_the_image_copies_what_the_package_needs():
    with open(os.path.join(REPO_ROOT, "deploy", "Dockerfile")) as f:
        dockerfile = f.read()
    copied = [path for line in dockerfile.splitlines() if line.startswith("COPY ") for path in line.split()[1:-1]]
    for path in copied:
        assert os.path.exists(os.path.join(REPO_ROOT, path)), path
    # The packages pyproject.toml installs are all in the image.
    assert {"tffpipe", "tasks", "pyproject.toml", "uv.lock"} <= set(copied)
    assert "uv sync --locked --no-dev" in dockerfile
    assert 'CMD ["python", "-m", "tffpipe.worker", "--port=8000", "--tls_dir=/tls"]' in dockerfile


def test_the_image_runs_as_an_unprivileged_user():
    with open(os.path.join(REPO_ROOT, "deploy", "Dockerfile")) as f:
        lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    (made,) = [line for line in lines if "useradd" in line]
    assert f"--uid {users[-1]}" in made
    assert lines.index(made) < max(i for i, line in enumerate(lines) if line.startswith("USER "))


def _tls_secret(pod: dict, container: dict) -> str:
    """The Secret mounted where the container's --tls_dir points."""
    args = container.get("args", []) + container.get("command", [])
    tls_dir = _flag_value(args, "tls_dir")
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == tls_dir]
    assert mount.get("readOnly") is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    return volume["secret"]["secretName"]


def test_workers_and_launcher_hold_certificates_and_only_the_launcher_reaches_the_workers(objects):
    sts = objects[("StatefulSet", "tffpipe-worker")]
    job = objects[("Job", "tffpipe-train")]
    worker_pod, launcher_pod = sts["spec"]["template"]["spec"], job["spec"]["template"]["spec"]
    assert _tls_secret(worker_pod, worker_pod["containers"][0]) == "tffpipe-worker-tls"
    assert _tls_secret(launcher_pod, launcher_pod["containers"][0]) == "tffpipe-launcher-tls"
    assert "insecure_workers" not in " ".join(
        worker_pod["containers"][0]["command"] + launcher_pod["containers"][0]["args"]
    )
    for pod in (worker_pod, launcher_pod):
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    policy = objects[("NetworkPolicy", "tffpipe-worker")]["spec"]
    worker_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= worker_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    (source,) = rule["from"]
    assert source["podSelector"]["matchLabels"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    port = int(_flag_value(worker_pod["containers"][0]["command"], "port"))
    assert rule["ports"] == [{"protocol": "TCP", "port": port}]


RAY_K8S = os.path.join(K8S, "ray")


@pytest.fixture(scope="module")
def ray_objects():
    return _kustomization_objects(RAY_K8S)


def _ray_pods(cluster):
    yield cluster["spec"]["headGroupSpec"]
    yield from cluster["spec"]["workerGroupSpecs"]


def test_the_ray_cluster_requires_the_token_the_launcher_holds(ray_objects):
    (cluster,) = [doc for (kind, _), doc in ray_objects.items() if kind == "RayCluster"]
    job = ray_objects[("Job", "tffpipe-ray-train")]
    auth = cluster["spec"]["authOptions"]
    assert auth["mode"] == "token"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": auth["secretName"], "key": "auth_token"}
    # The cluster runs the Ray the launcher was locked with, in the launcher's image.
    import ray

    assert cluster["spec"]["rayVersion"] == ray.__version__
    for group in _ray_pods(cluster):
        (ray_container,) = group["template"]["spec"]["containers"]
        assert ray_container["image"] == container["image"]


def test_the_ray_launcher_joins_the_head_service_and_resumes_on_restart(ray_objects):
    (cluster,) = [doc for (kind, _), doc in ray_objects.items() if kind == "RayCluster"]
    job = ray_objects[("Job", "tffpipe-ray-train")]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    cfg = cli.parse(["train", *container["args"]])
    assert cfg.runtime.name == "ray"
    # KubeRay names the head's Service <cluster>-head-svc; the GCS listens on 6379.
    head_port = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    assert cfg.runtime.ray.ray_address == f"{cluster['metadata']['name']}-head-svc:{head_port}"
    assert not cfg.runtime.ray.ray_allow_unauthenticated
    (mount,) = [m for m in container["volumeMounts"] if cfg.output.root_dir.startswith(m["mountPath"])]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in ray_objects
    assert pod["restartPolicy"] == "OnFailure" and job["spec"]["backoffLimit"] >= 1


def test_the_gpu_group_reserves_what_it_tells_ray_and_only_the_run_reaches_the_pods(ray_objects):
    (cluster,) = [doc for (kind, _), doc in ray_objects.items() if kind == "RayCluster"]
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    for group in groups.values():
        (container,) = group["template"]["spec"]["containers"]
        limits = container["resources"]["limits"]
        assert float(group["rayStartParams"]["num-cpus"]) <= float(limits["cpu"])
        assert int(group["rayStartParams"].get("num-gpus", 0)) == int(limits.get("nvidia.com/gpu", 0))
    assert int(groups["gpu"]["rayStartParams"]["num-gpus"]) >= 1
    assert cluster["spec"]["headGroupSpec"]["rayStartParams"]["include-dashboard"] == "false"
    policy = ray_objects[("NetworkPolicy", "tffpipe-ray")]
    pod_labels = [g["template"]["metadata"]["labels"] for g in _ray_pods(cluster)]
    assert all(policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items() for labels in pod_labels)
    allowed = [rule["podSelector"]["matchLabels"] for rule in policy["spec"]["ingress"][0]["from"]]
    job_labels = ray_objects[("Job", "tffpipe-ray-train")]["spec"]["template"]["metadata"]["labels"]
    assert any(a.items() <= job_labels.items() for a in allowed)
    assert all(any(a.items() <= labels.items() for labels in pod_labels + [job_labels]) for a in allowed)
