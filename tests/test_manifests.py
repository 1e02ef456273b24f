"""infra/: the container image and the Kubernetes manifests, checked offline.

Every YAML document under infra/ and every rendered kustomization is validated against a schema: KubeRay
kinds against the CRDs of KubeRay v1.7.0 (shared/kuberay-crds beside the repository), core kinds with
kubernetes-validate's strict schemas. Also checked: one cluster spec behind every job, each job's config
and its fit in its cluster, the Dockerfile, and that no file of the repository holds a credential.
"""
from __future__ import annotations

import copy
import functools
import importlib.metadata
import math
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import jsonschema
import kubernetes_validate
import pytest
import yaml

from scaleclust import config, methods

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
K8S = INFRA / "k8s"
CRDS = Path(__file__).resolve().parents[2] / "shared" / "kuberay-crds"
KUBERNETES = "1.32"  # the Kubernetes release whose schemas core kinds are checked against
RAY_CRDS = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
            "RayCronJob": "ray.io_raycronjobs.yaml"}
KINDS = {"RayCluster", "RayJob", "RayCronJob", "CronJob", "Role", "RoleBinding", "ServiceAccount"}
IMAGE_PLACEHOLDER = "scaleclust"  # the base's image name; overlays set the real one with `images:`
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

kubectl_on_path = pytest.mark.skipif(shutil.which("kubectl") is None,
                                     reason="kubectl is not on PATH, so the kustomizations cannot be rendered")
RENDERS = [kubectl_on_path, pytest.mark.subprocess]  # `kubectl kustomize` runs as a process


def needs_kubectl(test: Callable[..., None]) -> Callable[..., None]:
    for mark in RENDERS:
        test = mark(test)
    return test

needs_crds = pytest.mark.skipif(not CRDS.is_dir(),
                                reason="no KubeRay CRDs in shared/kuberay-crds beside the repository")


# --- what the YAML files under infra/ are -------------------------------------------------------------

def yaml_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml"))


def role(path: Path) -> str:
    """A file is a kustomization, a patch (in a patches/ folder), a kustomize transformer config (in a
    transformers/ folder), or else resources, which must validate in full: by location, so a resource
    file cannot pass as a patch by accident."""
    folders = path.relative_to(INFRA).parts[:-1]
    if path.name == "kustomization.yaml":
        return "kustomization"
    if "patches" in folders:
        return "patch"
    if "transformers" in folders:
        return "transformer"
    return "resources"


def documents(text: str) -> list[Any]:
    return [doc for doc in yaml.load_all(text, Loader=Loader) if doc is not None]


def with_embedded(docs: list[Any]) -> list[Any]:
    """The documents plus the manifests that ConfigMaps carry as text (the nightly RayJob)."""
    embedded = []
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
            for key, text in (doc.get("data") or {}).items():
                if key.endswith((".yaml", ".yml")):
                    embedded += [d for d in documents(text) if isinstance(d, dict) and "kind" in d]
    return docs + embedded


def kustomization(folder: Path) -> dict[str, Any]:
    return yaml.load((folder / "kustomization.yaml").read_text(), Loader=Loader)


# Rendered roots: the base and every overlay. Components and transformer configs are reached from them.
ROOTS = [K8S / "base", *sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))]


@functools.cache
def rendered(root: Path) -> list[Any]:
    out = subprocess.run(["kubectl", "kustomize", str(root)], capture_output=True, text=True)
    assert out.returncode == 0, f"kubectl kustomize {root.relative_to(REPO)}:\n{out.stderr}"
    return with_embedded(documents(out.stdout))


def resources(source: Path) -> list[Any]:
    return rendered(source) if source.is_dir() else with_embedded(documents(source.read_text()))


SOURCES = [pytest.param(p, id=str(p.relative_to(REPO))) for p in yaml_files() if role(p) == "resources"] + [
    pytest.param(root, id=f"rendered {root.relative_to(REPO)}", marks=RENDERS) for root in ROOTS]


# --- schemas --------------------------------------------------------------------------------------------

def json_schema(node: Any) -> Any:
    """A CRD's OpenAPI v3 schema as a JSON schema. Unknown fields are errors (as with kubectl's strict
    field validation) except under x-kubernetes-preserve-unknown-fields; int-or-string and nullable
    become JSON types; a required field whose schema has a default is optional, as the operator fills
    it in."""
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = json_schema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [json_schema(sub) for sub in value]
        elif not key.startswith("x-kubernetes-") and key != "nullable":
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "required" in out:
        defaulted = {name for name, sub in node.get("properties", {}).items() if "default" in sub}
        out["required"] = [name for name in out["required"] if name not in defaulted]
    if "properties" in node and "additionalProperties" not in node \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@functools.cache
def ray_validator(kind: str) -> jsonschema.Validator:
    """The schema of `kind` in the CRD's storage version, with apiVersion and kind pinned."""
    crd = yaml.load((CRDS / RAY_CRDS[kind]).read_text(), Loader=Loader)
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    schema = json_schema(version["schema"]["openAPIV3Schema"])
    schema["properties"]["apiVersion"] = {"const": f"{crd['spec']['group']}/{version['name']}"}
    schema["properties"]["kind"] = {"const": kind}
    schema["properties"]["metadata"] = {"type": "object",
                                        "anyOf": [{"required": ["name"]}, {"required": ["generateName"]}]}
    schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    return jsonschema.Draft202012Validator(schema)


def field(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "(document)"


def problems(doc: Any) -> list[str]:
    """Schema errors of one manifest, each as 'field.path[i]: message'."""
    if not isinstance(doc, dict) or not {"apiVersion", "kind"} <= doc.keys():
        return ["(document): not a Kubernetes object (apiVersion and kind are required)"]
    if doc["kind"] in RAY_CRDS:
        errors = list(ray_validator(doc["kind"]).iter_errors(doc))
    else:
        try:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
            errors = []
        except kubernetes_validate.ValidationError as error:
            errors = [error]
        except kubernetes_validate.SchemaNotFoundError as error:
            return [f"(document): {error.message}"]
    return sorted(f"{field(e.absolute_path)}: {e.message}" for e in errors)


def name(doc: dict[str, Any]) -> str:
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind')}/{meta.get('name') or meta.get('generateName')}"


@pytest.mark.parametrize("source", SOURCES)
def test_core_kinds_are_valid(source: Path) -> None:
    found = {name(d): problems(d) for d in resources(source) if d.get("kind") not in RAY_CRDS}
    assert {k: v for k, v in found.items() if v} == {}


@needs_crds
@pytest.mark.parametrize("source", SOURCES)
def test_kuberay_kinds_are_valid(source: Path) -> None:
    found = {name(d): problems(d) for d in resources(source) if d.get("kind") in RAY_CRDS}
    assert {k: v for k, v in found.items() if v} == {}


@needs_crds
def test_a_broken_raycluster_is_reported_by_field() -> None:
    (cluster,) = documents((K8S / "base" / "raycluster.yaml").read_text())
    assert problems(cluster) == []

    def broken(change: Any) -> list[str]:
        doc = copy.deepcopy(cluster)
        change(doc["spec"])
        return problems(doc)

    found = broken(lambda spec: spec["workerGroupSpecs"][0].update(replicas="two"))
    assert any(p.startswith("spec.workerGroupSpecs[0].replicas:") and "integer" in p for p in found), found
    found = broken(lambda spec: spec["headGroupSpec"].pop("template"))
    assert any(p.startswith("spec.headGroupSpec:") and "'template'" in p for p in found), found
    found = broken(lambda spec: spec["headGroupSpec"].update(rayStartParam={}))
    assert any(p.startswith("spec.headGroupSpec:") and "'rayStartParam'" in p for p in found), found
    assert any(p.startswith("apiVersion:") for p in problems({**cluster, "apiVersion": "ray.io/v1alpha1"}))
    # Required in the CRD but defaulted by the operator: may be left out.
    assert broken(lambda spec: spec["workerGroupSpecs"][0].pop("minReplicas")) == []


def test_a_broken_cronjob_is_reported_by_field() -> None:
    (cron,) = documents((K8S / "components" / "nightly-cronjob" / "cronjob.yaml").read_text())
    assert problems(cron) == []
    bad = copy.deepcopy(cron)
    bad["spec"]["startingDeadlineSeconds"] = "soon"
    (found,) = problems(bad)
    assert found.startswith("spec.startingDeadlineSeconds:") and "integer" in found, found
    bad = copy.deepcopy(cron)
    bad["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["argz"] = ["create"]
    (found,) = problems(bad)
    assert found.startswith("spec.jobTemplate.spec.template.spec.containers[0]:") and "'argz'" in found, found


def test_every_kind_is_in_the_raw_files() -> None:
    kinds = {d.get("kind") for p in yaml_files() if role(p) == "resources" for d in resources(p)}
    assert KINDS <= kinds, KINDS - kinds


@needs_kubectl
def test_every_kind_is_rendered() -> None:
    kinds = {d.get("kind") for root in ROOTS for d in rendered(root)}
    assert KINDS <= kinds, KINDS - kinds


# --- kustomize structure ---------------------------------------------------------------------------------

JSON_PATCH_OPS = {"add", "remove", "replace", "move", "copy", "test"}


def test_every_non_resource_file_is_what_its_folder_says() -> None:
    for path in yaml_files():
        docs = documents(path.read_text())
        kind = role(path)
        if kind == "kustomization":
            (doc,) = docs
            assert doc["kind"] in ("Kustomization", "Component"), path
            assert doc["apiVersion"].startswith("kustomize.config.k8s.io/"), path
        elif kind == "transformer":
            assert all(d["apiVersion"] == "builtin" and d["kind"].endswith("Transformer") for d in docs), path
        elif kind == "patch":
            (doc,) = docs
            if isinstance(doc, list):  # RFC 6902
                assert all(op["op"] in JSON_PATCH_OPS and op["path"].startswith("/") for op in doc), path
            else:  # strategic merge: names what it patches
                assert {"apiVersion", "kind"} <= doc.keys() and doc["metadata"]["name"], path


def referenced(folder: Path) -> Iterator[Path]:
    k = kustomization(folder)
    for key in ("resources", "components", "transformers"):
        yield from ((folder / entry).resolve() for entry in k.get(key, []))
    yield from ((folder / patch["path"]).resolve() for patch in k.get("patches", []) if "path" in patch)
    for generator in k.get("configMapGenerator", []):
        yield from ((folder / f.split("=")[-1]).resolve() for f in generator.get("files", []))


def test_every_file_is_reached_from_a_rendered_root() -> None:
    files, folders, todo = set(), set(), [root.resolve() for root in ROOTS]
    while todo:
        folder = todo.pop()
        if folder not in folders:
            folders.add(folder)
            files.add(folder / "kustomization.yaml")
            for path in referenced(folder):
                assert path.exists(), f"{folder.relative_to(REPO)} names {path.name}, which is missing"
                (todo.append if path.is_dir() else files.add)(path)
    assert [str(p.relative_to(REPO)) for p in K8S.rglob("*.yaml") if p.resolve() not in files] == []


# --- one cluster spec, and jobs that fit it ---------------------------------------------------------------

def of_kind(docs: list[Any], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def job_specs(docs: list[Any]) -> list[dict[str, Any]]:
    """The RayJob specs: of RayJobs (embedded ones too) and of RayCronJobs' templates."""
    return [d["spec"] for d in of_kind(docs, "RayJob")] + \
        [d["spec"]["jobTemplate"] for d in of_kind(docs, "RayCronJob")]


@needs_kubectl
@pytest.mark.parametrize("root", ROOTS, ids=lambda root: str(root.relative_to(REPO)))
def test_one_cluster_spec_behind_every_job(root: Path) -> None:
    (cluster,) = of_kind(rendered(root), "RayCluster")
    spec = cluster["spec"]
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    for group in spec["workerGroupSpecs"]:
        worker = group["template"]["spec"]["containers"][0]
        assert (worker["env"], worker["envFrom"]) == (head["env"], head["envFrom"]), group["groupName"]
    for job in job_specs(rendered(root)):
        # A copy of the cluster spec, or the standing cluster itself.
        assert job.get("rayClusterSpec") == spec or \
            job.get("clusterSelector") == {"ray.io/cluster": cluster["metadata"]["name"]}, job["entrypoint"]


def job_config(entrypoint: str) -> config.Config:
    """The config that a `scaleclust run|update CONFIG --set a.b=c ...` entrypoint runs, validated as the
    CLI validates it."""
    args = shlex.split(entrypoint)
    assert args[0] == "scaleclust" and args[1] in ("run", "update") and set(args[3::2]) <= {"--set"} and len(args) % 2, entrypoint
    return config.load(REPO / args[2], args[4::2])


def quantity(value: Any) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def slots(spec: dict[str, Any], cpus: float, gpus: float) -> float:
    """How many Ray tasks of `cpus` and `gpus` the worker pods hold at once at the groups' largest."""
    total = 0.0
    for group in spec["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        pod_gpus = quantity(limits.get("nvidia.com/gpu", 0))
        total += min(quantity(limits["cpu"]) // cpus, pod_gpus // gpus if gpus else math.inf) * group["maxReplicas"]
    return total


@needs_kubectl
@pytest.mark.parametrize("root", ROOTS, ids=lambda root: str(root.relative_to(REPO)))
def test_every_job_config_is_valid_and_fits_its_cluster(root: Path) -> None:
    (cluster,) = of_kind(rendered(root), "RayCluster")
    for job in job_specs(rendered(root)):
        cfg, spec = job_config(job["entrypoint"]), job.get("rayClusterSpec", cluster["spec"])
        embed, train = cfg.embed, cfg.cluster.train
        assert embed.min_actors <= embed.max_actors <= slots(spec, embed.cpus_per_actor, embed.gpus_per_actor), \
            job["entrypoint"]
        if methods.get(cfg.cluster.method).trains == "ray_train":  # Ray Train: one GPU per worker with use_gpu
            assert train.workers <= slots(spec, train.cpus_per_worker, int(train.use_gpu)), job["entrypoint"]


@needs_kubectl
def test_dev_has_no_gpu_and_prod_uses_workload_identity() -> None:
    dev, prod = (rendered(K8S / "overlays" / env) for env in ("dev", "prod"))
    assert "nvidia.com/gpu" not in yaml.safe_dump_all(dev)
    assert all(not job_config(job["entrypoint"]).cluster.train.use_gpu for job in job_specs(dev))
    (account,) = [d for d in of_kind(prod, "ServiceAccount") if d["metadata"]["name"] == "scaleclust-ray"]
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    (cluster,) = of_kind(prod, "RayCluster")
    assert "gpu" in {group["groupName"] for group in cluster["spec"]["workerGroupSpecs"]}


# --- images -----------------------------------------------------------------------------------------------

def images(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "image" and isinstance(value, str):
                yield value
            else:
                yield from images(value)
    elif isinstance(node, list):
        for item in node:
            yield from images(item)


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of infra/docker/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (INFRA / "docker" / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def check_image(image: str) -> None:
    """Pinned by tag, and named without a registry host: where to pull from is the cluster's business."""
    first = image.split("/")[0]
    assert "/" not in image or not ("." in first or ":" in first or first == "localhost"), image
    assert re.search(r":[\w][\w.-]*$", image) and not image.endswith(":latest"), image


@pytest.mark.parametrize("source", SOURCES)
def test_images_are_pinned_and_name_no_registry(source: Path) -> None:
    for image in images(resources(source)):
        if image != IMAGE_PLACEHOLDER or source.is_dir() and source.parent.name == "overlays":
            check_image(image)


def test_dockerfile_pins_a_cuda_runtime_and_installs_the_package() -> None:
    steps = dockerfile()
    (base,) = [args for op, args in steps if op == "FROM"]
    check_image(base)
    cuda = re.fullmatch(r"nvidia/cuda:(\d+\.\d+)\.\d+-cudnn-runtime-ubuntu\d+\.\d+", base)
    assert cuda, base
    run = " ".join(args for op, args in steps if op == "RUN")
    assert re.search(r"\bpython3\.11\b", run) and re.search(r"\bwget\b", run), run
    assert re.search(r'\bpip install "\.\[gpu\]"(\s|$)', run), run  # faiss-gpu, not faiss-cpu
    # The base's CUDA is the one the pinned torch wheel was built for.
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert all("==" in pin for pin in pins), pins
    assert f"torch=={importlib.metadata.version('torch')}" in pins
    toolkit = [r for r in importlib.metadata.requires("torch") if r.startswith("cuda-toolkit")]
    assert toolkit, "the installed torch is not a CUDA build: its CUDA version is unknown"
    assert re.search(r"==(\d+\.\d+)", toolkit[0]).group(1) == cuda.group(1), toolkit
    # Everything copied is in the build context: Dockerfile.dockerignore excludes all else.
    rules = [line.strip() for line in (INFRA / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    copied = [src for op, args in steps if op == "COPY" for src in args.split()[:-1] if not src.startswith("--")]
    assert {"pyproject.toml", "scaleclust", "jobs"} <= set(copied)
    assert rules[0] == "*" and all(f"!{src}" in rules for src in copied), (rules, copied)


# --- no credential in the repository ----------------------------------------------------------------------

CREDENTIALS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"),
    "AWS secret access key": re.compile(
        r"(?i)aws_secret_access_key[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])"),
    "private key": re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"),
    "bearer token": re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/-]{20,}"),
    "GitHub token": re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})"),
    "Slack token": re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
}
# YAML keys that hold a secret; a literal value under one is a leak, a reference (a mapping such as
# valueFrom/secretKeyRef, or a ${VAR}) is not.
SECRET_KEY = re.compile(r"(password|passwd|secret|token|apikey|accesskey|secretkey|privatekey)$")


def yaml_secrets(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if node.get("kind") == "Secret" and (node.get("data") or node.get("stringData")):
            yield "a Secret with data"
        for key, value in node.items():
            literal = isinstance(value, (str, int, float)) and not isinstance(value, bool)
            if literal and str(value).strip() and not str(value).startswith(("$", "<", "{{")) \
                    and SECRET_KEY.search(re.sub(r"[^a-z]", "", str(key).lower())):
                yield f"a literal value under {key!r}"
            yield from yaml_secrets(value)
    elif isinstance(node, list):
        for item in node:
            yield from yaml_secrets(item)


def credentials(path: str, text: str) -> list[str]:
    found = [f"{path}: {what}" for what, pattern in CREDENTIALS.items() if pattern.search(text)]
    if path.endswith((".yaml", ".yml")):
        try:
            found += [f"{path}: {what}" for doc in yaml.load_all(text, Loader=Loader) for what in yaml_secrets(doc)]
        except yaml.YAMLError:
            pass  # not YAML after all; the patterns above still ran
    return found


def repository_files() -> list[Path]:
    """Tracked files and the untracked ones git would pick up: a credential must not get that far."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO, capture_output=True, check=True)
    return [REPO / name for name in out.stdout.decode().split("\0") if name and (REPO / name).is_file()]


@pytest.mark.subprocess  # git ls-files
def test_no_credential_in_the_repository() -> None:
    found = []
    for path in repository_files():
        data = path.read_bytes()
        if b"\0" not in data[:8192]:  # text files only
            found += credentials(str(path.relative_to(REPO)), data.decode("utf-8", errors="replace"))
    assert found == []


def test_the_scanner_flags_planted_credentials() -> None:
    # Assembled here so that this file holds none.
    planted = {
        "a.env": "AWS_ACCESS_KEY_ID=" + "AKIA" + "Q7" * 8,
        "b.py": "aws_secret_access_key = '" + "wJalr/K7+" * 4 + "abcd'",
        "c.pem": "-----BEGIN " + "OPENSSH PRIVATE KEY-----\nb3Blbn\n",
        "d.sh": "curl -H 'Authorization: " + "Bearer " + "eyJhbGciOi" * 3 + "'",
        "e.txt": "token: " + "ghp_" + "x1" * 18,
        "f.txt": "xox" + "b-" + "2048-abcdefghij",
        "g.yaml": "db:\n  pass" + "word: hunter2\n",
        "h.yaml": "apiVersion: v1\nkind: Secret\nmetadata: {name: s3}\nstringData: {key: value}\n",
    }
    for path, text in planted.items():
        assert credentials(path, text), path
    references = ("env:\n- name: AWS_SECRET_ACCESS_KEY\n  valueFrom:\n    secretKeyRef: {name: s3, key: k}\n"
                  "password: ''\napiKey: ${API_KEY}\nautomountServiceAccountToken: false\n")
    assert credentials("ok.yaml", references) == []


@needs_kubectl
@pytest.mark.parametrize("root", ROOTS[1:], ids=lambda root: str(root.relative_to(REPO)))
def test_nightly_jobs_run_the_update(root: Path) -> None:
    """Every overlay schedules a night, and a night is `scaleclust update` (new shards, drift, a version)."""
    from scaleclust import update

    docs = rendered(root)
    nightly = [d["spec"]["jobTemplate"] for d in of_kind(docs, "RayCronJob")] + [
        d["spec"] for d in of_kind(docs, "RayJob")
        if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "nightly"]
    assert nightly
    assert all(shlex.split(job["entrypoint"])[:2] == ["scaleclust", "update"] for job in nightly), nightly
    for job in nightly:
        update.check(job_config(job["entrypoint"]))  # what `update` checks before any work
