"""CI's check of the deployment files, which cannot be exercised here.

No Docker engine runs on the development and CI machines, and there is no cluster, so the
images are never built and the manifests never applied in CI. What can be checked is checked:
every Kubernetes object validates against the bundled API schemas in strict mode (unknown
fields are errors), every kustomization renders (with `kubectl kustomize` where it is
installed) and references only files that exist, and the Dockerfile, the compose file, the
manifests, docs/design.md, service/config.py and docs/deploy.md agree on names, ports, probes,
commands and environment variables. The last group catches the drift that breaks a
deployment silently: a renamed variable, a probe on the wrong path, a Secret key nobody sets.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
DOCS = REPO / "docs" / "deploy.md"

NAMESPACE = "gatequeue"
NODE_PORT = 30080
API_PORT = 8080
WORKER_METRICS_PORT = 9100  # `gatequeue worker --metrics-port` in the manifests
# The oldest Kubernetes minor these manifests promise to work on, and the newest schema
# bundled with kubernetes-validate.
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())

# Kinds from CRDs: no bundled schema, so tests/test_deploy_manifests.py checks their fields.
CRD_KINDS = {("keda.sh/v1alpha1", "ScaledObject"), ("keda.sh/v1alpha1", "TriggerAuthentication")}


def _design_config_names() -> set[str]:
    """The variables docs/design.md's "Configuration" section names."""
    text = (REPO / "docs" / "design.md").read_text(encoding="utf-8")
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"`([A-Z][A-Z0-9_]+)`", section))


def _config_module_names() -> set[str]:
    """The variables service/config.py reads (`env.get("X")`, `env["X"]`)."""
    text = (REPO / "service" / "config.py").read_text(encoding="utf-8")
    return set(re.findall(r"""env(?:\.get\(|\[)["']([A-Z][A-Z0-9_]+)["']""", text))


# Every variable a container may be given: what the service reads (the CLI's GATEQUEUE_API
# is for people, not containers).
ALLOWED_APP_ENV = _config_module_names()

# The Secret's keys; overlays/minikube/secret.yaml has them all and docs/deploy.md lists them.
SECRET_NAME = "gatequeue-secrets"
SECRET_KEYS = {
    "mongo-root-username",
    "mongo-root-password",
    "mongo-keyfile",
    "mongodb-uri",
    "api-token",
}

# pyproject dependencies that only the trainer needs: the api image must not carry them.
# (numpy is in both: the API validates and encodes data set uploads, docs/datasets.md; it is
# imported only when an upload comes, so `gatequeue serve` still starts without it.)
WORKER_ONLY_DEPS = {"torch", "entmax", "scikit-learn"}

OVERLAYS = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
COMPONENTS = sorted(p.parent for p in (K8S / "components").glob("*/kustomization.yaml"))
KUSTOMIZATION_DIRS = sorted(p.parent for p in K8S.rglob("kustomization.yaml"))
RENDER_TARGETS = [K8S / "base", *OVERLAYS]

Doc = dict[str, Any]


def rel(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def load_docs(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def load_doc(path: Path) -> Any:
    docs = load_docs(path)
    assert len(docs) == 1, f"{rel(path)}: expected one YAML document, found {len(docs)}"
    return docs[0]


# --------------------------------------------------------------------------------------
# kustomize, without kustomize: what each kustomization.yaml references
# --------------------------------------------------------------------------------------


@dataclass
class Kustomization:
    directory: Path
    kind: str
    resources: list[Path] = field(default_factory=list)
    components: list[Path] = field(default_factory=list)
    patches: list[Path] = field(default_factory=list)
    generator_files: list[Path] = field(default_factory=list)
    images: list[Doc] = field(default_factory=list)


@cache
def kustomization(directory: Path) -> Kustomization:
    doc = load_doc(directory / "kustomization.yaml")
    unsupported = {"bases", "patchesStrategicMerge", "patchesJson6902", "commonLabels", "vars"}
    used = unsupported & doc.keys()
    assert not used, f"{rel(directory)}: deprecated kustomize fields {sorted(used)}"
    k = Kustomization(directory=directory, kind=doc.get("kind", "Kustomization"))
    k.resources = [directory / r for r in doc.get("resources", [])]
    k.components = [directory / c for c in doc.get("components", [])]
    for patch in doc.get("patches", []):
        assert "path" in patch, f"{rel(directory)}: inline patches are not used here: {patch}"
        k.patches.append(directory / patch["path"])
    for generator in doc.get("configMapGenerator", []) + doc.get("secretGenerator", []):
        for entry in generator.get("files", []) + generator.get("envs", []):
            k.generator_files.append(directory / entry.split("=", 1)[-1])
    k.images = doc.get("images", [])
    return k


def resource_files(directory: Path) -> Iterator[Path]:
    """Every manifest file a kustomization pulls in, following directories and components."""
    k = kustomization(directory)
    for entry in [*k.resources, *k.components]:
        if entry.is_dir():
            yield from resource_files(entry.resolve())
        else:
            yield entry.resolve()


def all_resource_files() -> list[Path]:
    files: set[Path] = set()
    for directory in KUSTOMIZATION_DIRS:
        k = kustomization(directory)
        files.update(p.resolve() for p in k.resources if p.is_file())
    return sorted(files)


def all_patch_files() -> list[Path]:
    return sorted({p.resolve() for d in KUSTOMIZATION_DIRS for p in kustomization(d).patches})


@cache
def render(directory: Path) -> tuple[Doc, ...]:
    """The objects `kubectl apply -k DIRECTORY` would send; skips where kubectl is missing."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; file-level checks still run")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {rel(directory)}:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def base_objects() -> list[Doc]:
    """The base's objects straight from its files, generated ConfigMaps included: for the
    checks that must run without kubectl. Patches are not applied."""
    objects = [doc for path in resource_files(K8S / "base") for doc in load_docs(path)]
    doc = load_doc(K8S / "base" / "kustomization.yaml")
    for generator in doc.get("configMapGenerator", []):
        data = dict(item.split("=", 1) for item in generator.get("literals", []))
        for entry in generator.get("files", []):
            key, _, path = entry.rpartition("=")
            source = K8S / "base" / path
            data[key or source.name] = source.read_text(encoding="utf-8")
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": generator["name"]},
                "data": data,
            }
        )
    return objects


def find(objects: list[Doc] | tuple[Doc, ...], kind: str, name: str) -> Doc:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def pod_spec(obj: Doc) -> Doc | None:
    if obj["kind"] in {"Deployment", "StatefulSet", "Job", "DaemonSet", "ReplicaSet"}:
        return obj["spec"]["template"]["spec"]
    if obj["kind"] == "Pod":
        return obj["spec"]
    return None


def workloads(objects: list[Doc] | tuple[Doc, ...]) -> list[Doc]:
    return [o for o in objects if pod_spec(o) is not None]


def containers(spec: Doc) -> list[Doc]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def image_basename(image: str) -> str:
    return image.rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0]


def app_containers(objects: list[Doc] | tuple[Doc, ...]) -> list[tuple[Doc, Doc]]:
    """(workload, container) pairs running one of our images."""
    return [
        (w, c)
        for w in workloads(objects)
        for c in containers(pod_spec(w) or {})
        if image_basename(c["image"]) in {"gatequeue-api", "gatequeue-worker"}
    ]


def full_command(container: Doc) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def env_names(container: Doc, objects: list[Doc] | tuple[Doc, ...]) -> set[str]:
    names = {e["name"] for e in container.get("env", [])}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, f"{container['name']}: envFrom only from ConfigMaps"
        config_map = find(objects, "ConfigMap", source["configMapRef"]["name"])
        names.update(config_map.get("data", {}))
    return names


def validate_strictly(doc: Doc, where: str) -> None:
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(
                f"{where}: {doc['kind']}/{doc['metadata']['name']} against "
                f"Kubernetes {version}: {path}: {e.message}"
            )


def check_crd_object(doc: Doc, objects: list[Doc] | tuple[Doc, ...] | None) -> None:
    """Hand check of the KEDA objects: the fields KEDA requires, and what they point at."""
    kind = doc["kind"]
    assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"}, doc.keys()
    assert doc["metadata"]["name"]
    spec = doc["spec"]
    if kind == "TriggerAuthentication":
        refs = spec["secretTargetRef"]
        assert refs and all(set(r) == {"parameter", "name", "key"} for r in refs), refs
        for ref in refs:
            assert ref["name"] == SECRET_NAME and ref["key"] in SECRET_KEYS, ref
        assert {r["parameter"] for r in refs} == {"connectionString"}, refs
        return
    assert kind == "ScaledObject"
    allowed = {
        "scaleTargetRef",
        "minReplicaCount",
        "maxReplicaCount",
        "pollingInterval",
        "cooldownPeriod",
        "idleReplicaCount",
        "advanced",
        "fallback",
        "triggers",
    }
    assert set(spec) <= allowed, set(spec) - allowed
    assert spec["scaleTargetRef"]["name"] == "gatequeue-worker"
    assert 0 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "mongodb"
    metadata = trigger["metadata"]
    assert all(isinstance(v, str) for v in metadata.values()), "KEDA metadata values are strings"
    assert metadata["collection"] == "jobs"
    query = json.loads(metadata["query"])
    assert query == {"status": {"$in": ["Pending", "Running"]}}, query
    assert int(metadata["queryValue"]) >= 1
    assert int(metadata.get("activationQueryValue", "0")) >= 0
    if objects is not None:
        find(objects, "Deployment", spec["scaleTargetRef"]["name"])
        find(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        db = find(objects, "ConfigMap", "gatequeue-config")["data"]["GATEQUEUE_DB"]
        assert metadata["dbName"] == db, "the scaler must count jobs in the app's database"


# --------------------------------------------------------------------------------------
# Kubernetes: files and kustomizations
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", sorted([*K8S.rglob("*.yaml"), *K8S.rglob("*.yml"), COMPOSE_FILE]), ids=rel
)
def test_yaml_files_parse(path: Path) -> None:
    assert load_docs(path), f"{rel(path)} is empty"


def test_the_tree_has_base_overlays_and_components() -> None:
    assert (K8S / "base" / "kustomization.yaml").is_file()
    assert {p.name for p in OVERLAYS} >= {
        "minikube",
        "minikube-cpu",
        "gpu-cluster",
        "gpu-cluster-keda",
    }
    assert {p.name for p in COMPONENTS} >= {"keda", "nvidia-runtime", "cpu-worker"}


@pytest.mark.parametrize("directory", KUSTOMIZATION_DIRS, ids=rel)
def test_kustomization_references_exist(directory: Path) -> None:
    k = kustomization(directory)
    expected_kind = "Component" if directory.parent.name == "components" else "Kustomization"
    assert k.kind == expected_kind
    for entry in k.resources:
        assert entry.is_file() or (entry / "kustomization.yaml").is_file(), rel(entry)
    for entry in k.components:
        assert kustomization(entry.resolve()).kind == "Component", rel(entry)
    for entry in [*k.patches, *k.generator_files]:
        assert entry.is_file(), f"{rel(directory)} names a missing file {entry}"


def test_every_file_under_k8s_is_used_by_a_kustomization() -> None:
    used: set[Path] = set()
    for directory in KUSTOMIZATION_DIRS:
        k = kustomization(directory)
        used.add((directory / "kustomization.yaml").resolve())
        used.update(p.resolve() for p in [*k.resources, *k.patches, *k.generator_files])
    present = {p.resolve() for p in K8S.rglob("*") if p.is_file()}
    unused = sorted(rel(p) for p in present - used)
    assert not unused, f"files no kustomization references (never deployed): {unused}"


def test_base_uses_no_crds() -> None:
    kinds = {(d["apiVersion"], d["kind"]) for d in base_objects()}
    assert not kinds & CRD_KINDS, "the base must apply on a cluster without KEDA"


@pytest.mark.parametrize("path", all_resource_files(), ids=rel)
def test_manifest_file_validates_strictly(path: Path) -> None:
    for doc in load_docs(path):
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            check_crd_object(doc, None)
        else:
            validate_strictly(doc, rel(path))


@pytest.mark.parametrize("path", all_patch_files(), ids=rel)
def test_patch_files_are_well_formed(path: Path) -> None:
    doc = load_doc(path)
    if isinstance(doc, list):  # RFC 6902
        for op in doc:
            assert op["op"] in {"add", "remove", "replace", "copy", "move", "test"}, op
            assert op["path"].startswith("/"), op
    else:  # strategic merge: must name an object of the base
        find(base_objects(), doc["kind"], doc["metadata"]["name"])


@pytest.mark.parametrize("directory", RENDER_TARGETS, ids=rel)
def test_rendered_objects_validate_strictly(directory: Path) -> None:
    objects = render(directory)
    assert objects
    for doc in objects:
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            check_crd_object(doc, objects)
        else:
            validate_strictly(doc, f"kubectl kustomize {rel(directory)}")
        if doc["kind"] not in {"Namespace"}:
            assert doc["metadata"].get("namespace") == NAMESPACE, doc["metadata"]


def test_each_component_renders_on_the_base(tmp_path: Path) -> None:
    """Components are only rendered through overlays; make sure each one works on its own."""
    for component in COMPONENTS:
        overlay = tmp_path / component.name
        overlay.mkdir()
        (overlay / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    # kustomize accepts only relative paths to other kustomizations.
                    "resources": [os.path.relpath(K8S / "base", overlay)],
                    "components": [os.path.relpath(component, overlay)],
                }
            )
        )
        objects = render(overlay)
        for doc in objects:
            if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
                check_crd_object(doc, objects)
            else:
                validate_strictly(doc, f"base + {rel(component)}")


# --------------------------------------------------------------------------------------
# Kubernetes: what the objects say
# --------------------------------------------------------------------------------------


def objects_for_checks() -> list[tuple[str, list[Doc] | tuple[Doc, ...]]]:
    """The base from its files always; every rendered overlay where kubectl exists."""
    sets: list[tuple[str, list[Doc] | tuple[Doc, ...]]] = [("base files", base_objects())]
    if shutil.which("kubectl"):
        sets += [(rel(d), render(d)) for d in RENDER_TARGETS]
    return sets


def test_api_service_is_node_port_30080() -> None:
    for where, objects in objects_for_checks():
        service = find(objects, "Service", "gatequeue-api")
        assert service["spec"]["type"] == "NodePort", where
        (port,) = service["spec"]["ports"]
        assert port["nodePort"] == NODE_PORT and port["port"] == API_PORT, where
        deployment = find(objects, "Deployment", "gatequeue-api")
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items(), where
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        named = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert named[port["targetPort"]] == API_PORT, where


def test_api_probes_hit_readyz_and_healthz() -> None:
    for where, objects in objects_for_checks():
        deployment = find(objects, "Deployment", "gatequeue-api")
        assert deployment["spec"]["replicas"] >= 2, where
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", where
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", where
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz", where


def test_containers_run_gatequeue_serve_and_worker() -> None:
    for where, objects in objects_for_checks():
        api = find(objects, "Deployment", "gatequeue-api")["spec"]["template"]["spec"]
        worker = find(objects, "Deployment", "gatequeue-worker")["spec"]["template"]["spec"]
        (api_container,) = api["containers"]
        (worker_container,) = worker["containers"]
        assert full_command(api_container)[:2] == ["gatequeue", "serve"], where
        command = full_command(api_container)
        assert command[command.index("--port") + 1] == str(API_PORT), where
        assert full_command(worker_container) == [
            "gatequeue",
            "worker",
            "--metrics-port",
            str(WORKER_METRICS_PORT),
        ], where
        ports = {p["name"]: p["containerPort"] for p in worker_container.get("ports", [])}
        assert ports == {"metrics": WORKER_METRICS_PORT}, where
        template = find(objects, "Deployment", "gatequeue-worker")["spec"]["template"]
        annotations = template["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/port") == str(WORKER_METRICS_PORT), where
        assert image_basename(api_container["image"]) == "gatequeue-api", where
        assert image_basename(worker_container["image"]) == "gatequeue-worker", where


def test_the_worker_s_grace_period_fits_a_checkpoint_and_a_hand_back() -> None:
    """SIGTERM: the trainers checkpoint and stop (DEFAULT_SHUTDOWN_GRACE_S), then SIGTERM and
    DEFAULT_STOP_GRACE_S; the checkpoint's upload and the hand-back need a minute more."""
    from service.worker.worker import DEFAULT_SHUTDOWN_GRACE_S, DEFAULT_STOP_GRACE_S

    needed = DEFAULT_SHUTDOWN_GRACE_S + DEFAULT_STOP_GRACE_S + 60
    for where, objects in objects_for_checks():
        spec = find(objects, "Deployment", "gatequeue-worker")["spec"]["template"]["spec"]
        assert spec["terminationGracePeriodSeconds"] >= needed, where
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    worker = compose["services"]["worker"]
    assert int(str(worker["stop_grace_period"]).removesuffix("s")) >= needed


def test_worker_liveness_reads_the_heartbeat_file() -> None:
    for where, objects in objects_for_checks():
        spec = find(objects, "Deployment", "gatequeue-worker")["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["GATEQUEUE_HEARTBEAT_FILE"].startswith("/tmp/"), where
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/tmp" in mounts, f"{where}: the heartbeat directory must be writable"
        assert env["GATEQUEUE_DATA_DIR"] in mounts, f"{where}: the data dir needs a volume"
        for probe in ("startupProbe", "livenessProbe"):
            command = container[probe]["exec"]["command"]
            assert command[:2] == ["python", "-c"], where
            assert "GATEQUEUE_HEARTBEAT_FILE" in command[2] and ">= 60" in command[2], where
            compile(command[2], probe, "exec")


def test_env_names_are_configuration_names() -> None:
    config_py = REPO / "service" / "config.py"
    config_source = config_py.read_text(encoding="utf-8") if config_py.exists() else None
    for where, objects in objects_for_checks():
        pairs = app_containers(objects)
        assert len(pairs) == 2, where
        for workload, container in pairs:
            names = env_names(container, objects)
            unknown = names - ALLOWED_APP_ENV
            assert not unknown, f"{where}: {workload['metadata']['name']} sets {unknown}"
            assert "MONGODB_URI" in names, where
            if config_source is not None:
                unread = {n for n in names if f'"{n}"' not in config_source}
                assert not unread, f"service/config.py never reads {unread}"


def test_gpu_request_and_runtime_class_per_overlay() -> None:
    base_worker = find(base_objects(), "Deployment", "gatequeue-worker")
    base_spec = base_worker["spec"]["template"]["spec"]
    (container,) = base_spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert "runtimeClassName" not in base_spec, "minikube and GKE have no RuntimeClass nvidia"
    expectations = {
        "minikube": (True, None, False),
        "minikube-cpu": (False, None, False),
        "gpu-cluster": (True, "nvidia", False),
        "gpu-cluster-keda": (True, "nvidia", True),
    }
    for overlay in OVERLAYS:
        assert overlay.name in expectations, f"add {overlay.name} to this test"
        wants_gpu, runtime_class, keda = expectations[overlay.name]
        objects = render(overlay)
        worker = find(objects, "Deployment", "gatequeue-worker")
        spec = worker["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        limits = container["resources"]["limits"]
        assert ("nvidia.com/gpu" in limits) == wants_gpu, overlay.name
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert (env.get("GATEQUEUE_GPUS") == "cpu") == (not wants_gpu), overlay.name
        assert spec.get("runtimeClassName") == runtime_class, overlay.name
        has_scaler = any(o["kind"] == "ScaledObject" for o in objects)
        assert has_scaler == keda, overlay.name
        assert ("replicas" in worker["spec"]) == (not keda), "KEDA owns the replica count"


def test_overlay_images() -> None:
    for overlay in OVERLAYS:
        for _, container in app_containers(render(overlay)):
            image = container["image"]
            if overlay.name.startswith("minikube"):
                assert image in {"gatequeue-api:dev", "gatequeue-worker:dev"}, image
                assert container["imagePullPolicy"] == "IfNotPresent"
            else:
                assert "/" in image and ":" in image.rsplit("/", 1)[-1], image


def test_every_container_has_requests_and_limits() -> None:
    for where, objects in objects_for_checks():
        for workload in workloads(objects):
            for container in containers(pod_spec(workload) or {}):
                resources = container.get("resources", {})
                for part in ("requests", "limits"):
                    got = set(resources.get(part, {}))
                    assert {"cpu", "memory"} <= got, (
                        f"{where}: {workload['metadata']['name']}/{container['name']} lacks {part}"
                    )


def test_pods_meet_the_restricted_pod_security_standard() -> None:
    namespace = find(base_objects(), "Namespace", NAMESPACE)
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    allowed_volumes = {
        "configMap",
        "secret",
        "emptyDir",
        "persistentVolumeClaim",
        "projected",
        "downwardAPI",
        "csi",
        "ephemeral",
    }
    for where, objects in objects_for_checks():
        for workload in workloads(objects):
            name = f"{where}: {workload['metadata']['name']}"
            spec = pod_spec(workload) or {}
            pod_security = spec.get("securityContext", {})
            assert pod_security.get("runAsNonRoot") is True, name
            assert pod_security.get("runAsUser", 0) != 0, name
            assert pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
            assert spec.get("automountServiceAccountToken") is False, name
            for key in ("hostNetwork", "hostPID", "hostIPC"):
                assert not spec.get(key), name
            for volume in spec.get("volumes", []):
                kinds = set(volume) - {"name"}
                assert kinds <= allowed_volumes, f"{name}: volume {volume['name']}"
            for container in containers(spec):
                security = container.get("securityContext", {})
                assert security.get("allowPrivilegeEscalation") is False, name
                assert security.get("capabilities", {}).get("drop") == ["ALL"], name
                assert not security.get("privileged"), name
                assert security.get("runAsUser", 1) != 0, name
                assert not any(p.get("hostPort") for p in container.get("ports", [])), name


def test_selectors_match_their_pods() -> None:
    for where, objects in objects_for_checks():
        pods = [pod_spec_labels(w) for w in workloads(objects)]
        for obj in objects:
            if obj["kind"] == "PodDisruptionBudget":
                selector = obj["spec"]["selector"]["matchLabels"]
            elif obj["kind"] == "Service":
                selector = obj["spec"]["selector"]
            elif obj["kind"] in {"Deployment", "StatefulSet"}:
                selector = obj["spec"]["selector"]["matchLabels"]
                assert selector.items() <= pod_spec_labels(obj).items(), where
                continue
            else:
                continue
            matching = [p for p in pods if selector.items() <= p.items()]
            assert matching, f"{where}: {obj['kind']}/{obj['metadata']['name']} selects nothing"


def pod_spec_labels(workload: Doc) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"].get("labels", {})


def test_secret_and_config_map_references_resolve() -> None:
    dev_secret = load_doc(K8S / "overlays" / "minikube" / "secret.yaml")
    assert dev_secret["metadata"]["name"] == SECRET_NAME
    assert set(dev_secret["stringData"]) == SECRET_KEYS
    for where, objects in objects_for_checks():
        config_maps = {
            o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"
        }
        for workload in workloads(objects):
            spec = pod_spec(workload) or {}
            for container in containers(spec):
                for env in container.get("env", []):
                    ref = env.get("valueFrom", {})
                    if "secretKeyRef" in ref:
                        assert ref["secretKeyRef"]["name"] == SECRET_NAME, where
                        assert ref["secretKeyRef"]["key"] in SECRET_KEYS, where
                    if "configMapKeyRef" in ref:
                        key_ref = ref["configMapKeyRef"]
                        assert key_ref["key"] in config_maps[key_ref["name"]], where
            for volume in spec.get("volumes", []):
                if "secret" in volume:
                    assert volume["secret"]["secretName"] == SECRET_NAME, where
                    assert {i["key"] for i in volume["secret"]["items"]} <= SECRET_KEYS
                if "configMap" in volume:
                    data = config_maps[volume["configMap"]["name"]]
                    assert {i["key"] for i in volume["configMap"]["items"]} <= set(data)


def test_mongo_replica_set_names_agree() -> None:
    objects = base_objects()
    statefulset = find(objects, "StatefulSet", "mongo")
    service = find(objects, "Service", "mongo")
    assert service["spec"]["clusterIP"] == "None" and statefulset["spec"]["serviceName"] == "mongo"
    assert service["spec"]["publishNotReadyAddresses"] is True
    (mongod,) = statefulset["spec"]["template"]["spec"]["containers"]
    args = dict(a.lstrip("-").split("=", 1) for a in mongod["args"] if "=" in a)
    assert args["keyFile"].startswith("/etc/mongo-keyfile/")
    assert mongod["image"] == "mongo:7"

    literals = load_doc(K8S / "base" / "kustomization.yaml")["configMapGenerator"][0]["literals"]
    rs_config = dict(item.split("=", 1) for item in literals)
    assert rs_config["MONGO_REPLICA_SET"] == args["replSet"]
    members = rs_config["MONGO_MEMBERS"].split(",")
    assert members == [
        f"mongo-{i}.mongo.{NAMESPACE}.svc:27017" for i in range(statefulset["spec"]["replicas"])
    ]

    uri = load_doc(K8S / "overlays" / "minikube" / "secret.yaml")["stringData"]["mongodb-uri"]
    match = re.fullmatch(r"mongodb://[^:@/]+:[^@/]+@([^/]+)/\?(.*)", uri)
    assert match, uri
    assert match.group(1).split(",") == members
    params = dict(p.split("=", 1) for p in match.group(2).split("&"))
    assert params == {"replicaSet": args["replSet"], "authSource": "admin"}


def test_rs_init_script_is_valid_javascript() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    script = K8S / "base" / "mongo" / "rs-init.js"
    result = subprocess.run(
        [node, "--check", str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    job = find(base_objects(), "Job", "mongo-rs-init")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"][-1] == "/scripts/" + script.name
    source = script.read_text(encoding="utf-8")
    for name in (
        "MONGO_REPLICA_SET",
        "MONGO_MEMBERS",
        "MONGO_ROOT_USERNAME",
        "MONGO_ROOT_PASSWORD",
        "MONGODB_URI",
        "MONGO_APP_DB",
    ):
        assert name in {e["name"] for e in container["env"]}, name
        assert f'"{name}"' in source, name


def test_keda_scaler_counts_jobs_of_the_app_database() -> None:
    component = K8S / "components" / "keda"
    docs = [d for p in resource_files(component) for d in load_docs(p)]
    objects = [*base_objects(), *docs]
    for doc in docs:
        check_crd_object(doc, objects)


# --------------------------------------------------------------------------------------
# docker compose
# --------------------------------------------------------------------------------------


@cache
def compose() -> Doc:
    return load_doc(COMPOSE_FILE)


def test_compose_services_and_gpu_profile() -> None:
    services = compose()["services"]
    assert {"mongo", "mongo-init", "api", "worker", "worker-gpu"} <= set(services)
    for name in ("mongo", "mongo-init", "api", "worker"):
        assert "profiles" not in services[name], f"{name} must start with a plain `up`"
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert services["worker"]["environment"]["GATEQUEUE_GPUS"] == "cpu"
    assert "GATEQUEUE_GPUS" not in gpu["environment"], "the GPU worker uses every GPU"


def test_compose_mongo_is_an_initiated_replica_set() -> None:
    services = compose()["services"]
    mongo = services["mongo"]
    assert mongo["image"] == "mongo:7"
    command = mongo["command"]
    replica_set = command[command.index("--replSet") + 1]
    assert "healthcheck" in mongo
    init = services["mongo-init"]
    assert init["image"] == "mongo:7"
    assert init["depends_on"]["mongo"]["condition"] == "service_healthy"
    script = init["command"][-1]
    assert f'_id: "{replica_set}"' in script and "NotYetInitialized" in script
    for name in ("api", "worker", "worker-gpu"):
        service = services[name]
        condition = service["depends_on"]["mongo-init"]["condition"]
        assert condition == "service_completed_successfully", name
        uri = service["environment"]["MONGODB_URI"]
        assert f"replicaSet={replica_set}" in uri, name


def test_compose_builds_the_dockerfile_targets() -> None:
    services = compose()["services"]
    targets = {name: s["build"]["target"] for name, s in services.items() if "build" in s}
    assert targets == {"api": "api", "worker": "worker", "worker-gpu": "worker"}
    for name, service in services.items():
        if "build" in service:
            context = (COMPOSE_FILE.parent / service["build"]["context"]).resolve()
            assert context == REPO, name
            assert service["build"].get("dockerfile", "Dockerfile") == "Dockerfile"
            assert service["build"]["target"] in dockerfile().stages


def test_compose_commands_ports_and_env() -> None:
    services = compose()["services"]
    assert services["api"]["command"][:2] == ["gatequeue", "serve"]
    assert services["api"]["ports"] == [f"{API_PORT}:{API_PORT}"]
    for name in ("worker", "worker-gpu"):
        assert services[name]["command"] == ["gatequeue", "worker"]
        mounts = [v.split(":", 1)[1] for v in services[name]["volumes"]]
        assert mounts == ["/var/lib/gatequeue/data"], "the image's GATEQUEUE_DATA_DIR"
    for name in ("api", "worker", "worker-gpu"):
        unknown = set(services[name]["environment"]) - ALLOWED_APP_ENV
        assert not unknown, f"{name}: {unknown}"


# --------------------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: dict[str, Stage]

    def expand(self, text: str, stage: Stage | None = None) -> str:
        values = {**self.global_args, **(stage.args if stage else {})}
        return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), text)

    def closure(self, name: str) -> list[Stage]:
        """A stage and every stage it is built FROM or copies from."""
        stage = self.stages[name]
        found = [stage]
        parents = [stage.base] + [
            m.group(1) for rest in stage.all("COPY") if (m := re.search(r"--from=(\S+)", rest))
        ]
        for parent in parents:
            if parent in self.stages:
                found += self.closure(parent)
        return found


def parse_arg(rest: str) -> tuple[str, str]:
    name, _, default = rest.partition("=")
    return name.strip(), default.strip().strip('"')


@cache
def dockerfile() -> Dockerfile:
    text = DOCKERFILE.read_text(encoding="utf-8")
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") and not current:
            continue
        if line.lstrip().startswith("#"):
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip():
            logical.append(current.strip())
        current = ""
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest.strip(), flags=re.IGNORECASE)
            assert match, f"every stage is named: FROM {rest}"
            stage = Stage(name=match.group(2), base=match.group(1))
            stages[stage.name] = stage
        elif stage is None:
            assert keyword == "ARG", f"only ARG may precede the first FROM, not {keyword}"
            name, default = parse_arg(rest)
            global_args[name] = default
        else:
            if keyword == "ARG":
                name, default = parse_arg(rest)
                stage.args[name] = default or global_args.get(name, "")
            stage.instructions.append((keyword, rest.strip()))
    return Dockerfile(global_args=global_args, stages=stages)


def test_dockerfile_has_api_and_worker_targets() -> None:
    df = dockerfile()
    assert {"api", "worker"} <= set(df.stages)
    worker = df.stages["worker"]
    builder = df.stages["worker-build"]
    assert re.fullmatch(r"nvidia/cuda:12\.[\d.]+-runtime-ubuntu[\d.]+", df.expand(worker.base))
    assert re.fullmatch(r"nvidia/cuda:12\.[\d.]+-devel-ubuntu[\d.]+", df.expand(builder.base))
    assert df.expand(worker.base).split("-")[0] == df.expand(builder.base).split("-")[0]
    assert df.expand(df.stages["api"].base).startswith("python:")


@pytest.mark.parametrize("target", ["api", "worker"])
def test_dockerfile_target_runs_as_non_root_with_healthcheck(target: str) -> None:
    df = dockerfile()
    stage = df.stages[target]
    users = stage.all("USER")
    assert users, f"{target}: no USER"
    user = df.expand(users[-1], stage).split(":", 1)[0]
    assert user not in {"root", "0", ""}, f"{target} runs as {user}"
    workload = "gatequeue-api" if target == "api" else "gatequeue-worker"
    spec = find(base_objects(), "Deployment", workload)["spec"]["template"]["spec"]
    assert str(spec["securityContext"]["runAsUser"]) == user, "k8s and image agree on the UID"
    (healthcheck,) = stage.all("HEALTHCHECK")
    assert "CMD" in healthcheck
    (cmd,) = stage.all("CMD")
    expected = ["gatequeue", "serve"] if target == "api" else ["gatequeue", "worker"]
    assert json.loads(cmd)[:2] == expected


def test_dockerfile_worker_health_uses_the_heartbeat_file() -> None:
    df = dockerfile()
    worker = df.stages["worker"]
    (env,) = [rest for rest in worker.all("ENV") if "GATEQUEUE_HEARTBEAT_FILE" in rest]
    assert "GATEQUEUE_HEARTBEAT_FILE=/tmp/gatequeue-worker-heartbeat" in env
    (healthcheck,) = worker.all("HEALTHCHECK")
    assert "GATEQUEUE_HEARTBEAT_FILE" in healthcheck and ">= 60" in healthcheck
    (api_healthcheck,) = df.stages["api"].all("HEALTHCHECK")
    assert f"127.0.0.1:{API_PORT}/healthz" in api_healthcheck


def test_dockerfile_env_names_are_configuration_names() -> None:
    df = dockerfile()
    for stage in df.stages.values():
        for rest in stage.all("ENV"):
            for name in re.findall(r"\b((?:GATEQUEUE|MONGODB)_\w+)=", rest):
                assert name in ALLOWED_APP_ENV, f"{stage.name}: ENV {name}"


def test_dockerfile_worker_builds_difflogic_for_common_gpus() -> None:
    df = dockerfile()
    arch_list = df.global_args["TORCH_CUDA_ARCH_LIST"].replace("+PTX", "").split(";")
    assert {"8.0", "8.6", "8.9", "9.0"} <= set(arch_list)
    builder = df.stages["worker-build"]
    runs = " ".join(builder.all("RUN"))
    assert "--no-build-isolation" in runs and "pip wheel" in runs and "difflogic" in runs
    assert "TORCH_CUDA_ARCH_LIST" in " ".join(builder.all("ENV"))
    cuda_minor = re.match(r"(\d+)\.(\d+)", df.global_args["CUDA_VERSION"])
    assert cuda_minor
    index_url = df.global_args["TORCH_INDEX_URL"]
    assert index_url.endswith(f"/cu{cuda_minor.group(1)}{cuda_minor.group(2)}"), (
        "nvcc and the torch wheel must be built for the same CUDA version"
    )


def test_dockerfile_api_image_has_no_torch_and_the_service_dependencies() -> None:
    df = dockerfile()
    chain = df.closure("api")
    runs = " ".join(rest for stage in chain for rest in stage.all("RUN"))
    for dep in WORKER_ONLY_DEPS:
        assert not re.search(rf"[\s\"']{re.escape(dep)}[\s\"'<>=]", runs), dep
    assert "--no-deps /src" in runs, "the package itself must not pull torch in"
    installed = set(re.findall(r'"([A-Za-z0-9_.\-\[\]]+[<>=!~][^"]*)"', runs))
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    deps = pyproject["project"]["dependencies"]

    def name_of(req: str) -> str:
        match = re.match(r"[A-Za-z0-9_.\-]+", req)
        assert match
        return match.group(0).lower()

    expected = {d for d in deps if name_of(d) not in WORKER_ONLY_DEPS}
    assert installed == expected, "keep the api stage's list equal to pyproject.toml"


def test_dockerignore_lets_the_copied_sources_in() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert patterns[0] == "*", "the .dockerignore is an allow-list"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    df = dockerfile()
    for stage in df.stages.values():
        for rest in stage.all("COPY"):
            if "--from=" in rest:
                continue
            sources = [s for s in rest.split() if not s.startswith("--")][:-1]
            for source in sources:
                assert source in allowed, f"{stage.name}: COPY {source} is ignored"
                assert (REPO / source).exists(), f"COPY {source}: missing from the repository"


def test_service_cli_imports_without_torch() -> None:
    """The api image has no torch, numpy, entmax or scikit-learn: `gatequeue serve` must
    start without them, so neither the CLI nor the `service.api` package may import them."""
    code = (
        "import importlib.abc, sys\n"
        "BLOCKED = {'torch', 'numpy', 'entmax', 'sklearn', 'difflogic'}\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ImportError(f'{name} is not in the api image')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import importlib, importlib.util, pkgutil\n"
        "import service.cli\n"
        "if importlib.util.find_spec('service.api') is not None:\n"
        "    import service.api\n"
        "    for module in pkgutil.walk_packages(service.api.__path__, 'service.api.'):\n"
        "        if not module.name.endswith('__main__'):\n"
        "            importlib.import_module(module.name)\n"
        "sys.argv = ['gatequeue', 'serve', '--help']\n"
        "try:\n"
        "    rc = service.cli.main()\n"
        "except SystemExit as exc:\n"
        "    rc = exc.code\n"
        "sys.exit(rc or 0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------------------
# docs/deploy.md matches the files
# --------------------------------------------------------------------------------------


def _trainer_names() -> set[str]:
    """The variables trainer/environment.py reads, the supervision ones named by
    trainer/protocol.py among them. (Only these two modules and service/config.py read the
    environment: tests/test_config.py.)"""
    from trainer import environment, protocol

    supervision = {protocol.SUPERVISED_ENV, protocol.DEADLINE_ENV, protocol.JOB_ID_ENV,
                   protocol.ATTEMPT_ENV, protocol.ATTEMPT_ID_ENV}  # fmt: skip
    return set(environment.NAMES) | supervision


def test_design_configuration_names_are_current() -> None:
    trainer = _trainer_names() - {"OMP_WAIT_POLICY"}  # OpenMP's, set by the trainer itself
    assert _config_module_names() | {"GATEQUEUE_API"} | trainer == _design_config_names()


def test_docs_describe_what_the_files_contain() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert "## Worker heartbeat" in text
    for needle in (
        "GATEQUEUE_HEARTBEAT_FILE",
        "/tmp/gatequeue-worker-heartbeat",
        str(NODE_PORT),
        "--profile gpu",
        "--target api",
        "--target worker",
        "runtimeClassName",
        "no Docker engine",
        "deploy/docker-compose.yml",
    ):
        assert needle in text, needle
    for directory in [*OVERLAYS, *COMPONENTS]:
        assert rel(directory) in text, f"docs/deploy.md does not mention {rel(directory)}"
    for key in SECRET_KEYS:
        assert f"`{key}`" in text, f"docs/deploy.md does not explain the Secret key {key}"
    for path in set(re.findall(r"\b((?:deploy|docs|tests)/[\w./-]*\w)", text)):
        assert (REPO / path).exists(), f"docs/deploy.md names a missing path {path}"
