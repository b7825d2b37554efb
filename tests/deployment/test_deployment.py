"""deployment/ checked offline (no docker, no cluster): the Dockerfile's inputs exist and its accelerator variants
name real requirement files; the entry point's flags are `quark serve`'s; every Kubernetes manifest validates
against the Kubernetes 1.37 schemas (kubernetes-validate, strict: unknown fields fail) and the pieces agree with
each other and with the metrics the server exports."""

from __future__ import annotations

import copy
import glob
import json
import os
import re
import shlex
import subprocess
import sys

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCKERFILE = os.path.join(REPO, "deployment", "Dockerfile")
K8S = os.path.join(REPO, "deployment", "k8s")
DEPLOYMENTS = ("deployment.yaml", "deployment-tpu.yaml", "deployment-gpu.yaml")
KUBERNETES_VERSION = "1.37.0"
SERVER_METRICS = ("quark_queue_depth", "quark_busy_slots")


# ---- the Dockerfile -------------------------------------------------------------------------------------------

def instructions(path: str = DOCKERFILE) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of a Dockerfile: comments dropped, continuation lines joined."""
    out, pending = [], ""
    for line in open(path, encoding="utf-8"):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):  # Docker drops comment lines inside continuations too
            continue
        pending += " " + stripped[:-1] if stripped.endswith("\\") else " " + stripped
        if not stripped.endswith("\\"):
            keyword, _, rest = pending.strip().partition(" ")
            out.append((keyword.upper(), rest.strip()))
            pending = ""
    assert not pending, "a continuation line ends the Dockerfile"
    return out


def arguments(text: str) -> list[str]:
    """Exec form (a JSON list) or shell words."""
    return json.loads(text) if text.startswith("[") else shlex.split(text)


def named(keyword: str) -> list[str]:
    return [rest for k, rest in instructions() if k == keyword]


def build_args() -> dict[str, str]:
    return dict(a.split("=", 1) if "=" in a else (a, "") for a in named("ARG"))


def exec_form(keyword: str) -> list[str]:
    (text,) = named(keyword)
    assert text.startswith("["), f"{keyword} should be in exec form (a JSON list): signals reach the server"
    return json.loads(text)


def test_copy_sources_exist():
    copied = []
    for rest in named("COPY"):
        words = [w for w in arguments(rest) if not w.startswith("--")]
        assert "--from" not in rest
        for source in words[:-1]:
            assert os.path.exists(os.path.join(REPO, source)), f"COPY {source}: not in the repository"
            copied.append(source)
    assert {"requirements.txt", "requirements-tpu.txt", "."} <= set(copied)
    ignored = open(os.path.join(REPO, ".dockerignore"), encoding="utf-8").read().split()
    assert {".venv", ".git", ".cache", "runs"} <= set(ignored), "COPY . . would copy environments and runs"


def test_accelerator_variants_name_existing_requirements():
    args = build_args()
    assert args["ACCELERATOR"] == "cpu"
    (install,) = [r for r in named("RUN") if "ACCELERATOR" in r]
    branches = dict(re.findall(r"(\w+)\)\s*([^;]*);;", install))
    assert set(branches) == {"cpu", "tpu", "gpu"}
    copied = {w for rest in named("COPY") for w in arguments(rest)[:-1]}
    for accelerator, command in branches.items():
        files = re.findall(r"-r\s+(\S+)", command)
        assert files, f"ACCELERATOR={accelerator} installs no requirements file"
        for name in files:
            assert os.path.isfile(os.path.join(REPO, name)) and name in copied, name
    assert re.findall(r"-r\s+(\S+)", branches["tpu"]) == ["requirements-tpu.txt"]
    assert '"jax[cuda12]==${JAX_VERSION}"' in branches["gpu"]
    # The GPU build stacks jax[cuda12] on requirements.txt: the versions must agree, as requirements-tpu.txt's do.
    requirements = open(os.path.join(REPO, "requirements.txt"), encoding="utf-8").read()
    tpu_requirements = open(os.path.join(REPO, "requirements-tpu.txt"), encoding="utf-8").read()
    (cpu_version,) = re.findall(r"^jax\[cpu\]==(\S+)$", requirements, re.M)
    assert args["JAX_VERSION"] == cpu_version == re.findall(r"^jax\[tpu\]==(\S+)$", tpu_requirements, re.M)[0]


def test_entry_point_port_and_healthcheck():
    assert exec_form("ENTRYPOINT") == ["python", "-m", "quark_jax.cli", "serve"]
    cmd = exec_form("CMD")
    assert dict(zip(cmd[::2], cmd[1::2])) == {"--host": "0.0.0.0", "--port": "8000", "--model_dir": "/models/run"}
    assert named("EXPOSE") == ["8000"]
    (check,) = named("HEALTHCHECK")
    assert "urllib.request" in check and "http://127.0.0.1:8000/health" in check and "curl" not in check
    probe = json.loads(check[check.index("CMD") + 3:].strip())
    assert probe[:2] == ["python", "-c"]
    compile(probe[2], "HEALTHCHECK", "exec")  # the probe is valid Python


def quark_help(*command: str) -> str:
    result = subprocess.run([sys.executable, "-m", "quark_jax.cli", *command, "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")})
    assert result.returncode == 0, result.stderr
    return result.stdout


def flags(words: list[str]) -> set[str]:
    return {w for w in words if w.startswith("--")}


def test_entry_point_flags_are_quark_serve_flags():
    commands = re.search(r"\{([\w,]+)\}", quark_help()).group(1).split(",")
    if "serve" not in commands:
        pytest.skip("quark_jax/cli.py has no `serve` subcommand yet")
    text = quark_help("serve")
    passed = flags(exec_form("CMD"))
    for name in DEPLOYMENTS:
        passed |= flags(container(load(name)[0])["args"])
    assert passed >= {"--host", "--port", "--model_dir"}
    missing = sorted(f for f in passed if not re.search(rf"{re.escape(f)}\b", text))
    assert not missing, f"the image and manifests pass {missing}, which `quark serve --help` does not list"


# ---- the Kubernetes manifests ---------------------------------------------------------------------------------

def load(name: str) -> list[dict]:
    with open(os.path.join(K8S, name), encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def container(deployment: dict) -> dict:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(K8S, "*.yaml"))), ids=os.path.basename)
def test_manifest_matches_the_kubernetes_schema(path):
    import kubernetes_validate

    documents = load(os.path.basename(path))
    assert documents
    for document in documents:
        assert kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True) == "1.37"


def test_the_validator_rejects_a_broken_manifest():
    import kubernetes_validate

    broken = copy.deepcopy(load("deployment.yaml")[0])
    container(broken)["readinesProbe"] = container(broken).pop("readinessProbe")  # a typo: unknown in strict mode
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    broken = copy.deepcopy(load("hpa.yaml")[0])
    broken["spec"]["metrics"][0]["pods"]["target"]["type"] = 4
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_deployment_probes_port_and_scrape(name):
    (deployment,) = load(name)
    assert deployment["kind"] == "Deployment" and deployment["metadata"]["name"] == "quark-serve"
    pod = deployment["spec"]["template"]
    c = container(deployment)
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8000}
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "compiling a model takes minutes"
    assert pod["metadata"]["annotations"] == {"prometheus.io/scrape": "true", "prometheus.io/port": "8000",
                                              "prometheus.io/path": "/metrics"}
    assert {"requests", "limits"} <= set(c["resources"])
    args = c["args"]
    assert args[args.index("--model_dir") + 1] == "$(MODEL_DIR)"
    assert any(e["name"] == "MODEL_DIR" for e in c["env"])  # $(MODEL_DIR) expands only from a declared variable
    mounts = {m["name"] for m in c["volumeMounts"]}
    assert mounts == {v["name"] for v in pod["spec"]["volumes"]}


def test_accelerator_variants():
    (tpu,) = load("deployment-tpu.yaml")
    assert tpu["spec"]["template"]["spec"]["nodeSelector"] == {
        "cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice", "cloud.google.com/gke-tpu-topology": "1x1"}
    assert container(tpu)["resources"]["limits"]["google.com/tpu"] == 1
    assert container(tpu)["image"].endswith(":tpu")
    (gpu,) = load("deployment-gpu.yaml")
    assert "cloud.google.com/gke-accelerator" in gpu["spec"]["template"]["spec"]["nodeSelector"]
    assert container(gpu)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container(gpu)["image"].endswith(":gpu")
    (cpu,) = load("deployment.yaml")
    assert "nodeSelector" not in cpu["spec"]["template"]["spec"]


def test_service_reaches_the_pods():
    (service,) = load("service.yaml")
    pod_labels = load("deployment.yaml")[0]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["port"] == 80 and port["targetPort"] == "http"
    assert service["spec"]["sessionAffinity"] == "ClientIP"


def adapter_rules() -> list[dict]:
    (config_map,) = load("prometheus-adapter-rules.yaml")
    assert config_map["kind"] == "ConfigMap"
    return yaml.safe_load(config_map["data"]["config.yaml"])["rules"]


def test_adapter_rules_expose_the_server_gauges():
    exposed = {}
    for rule in adapter_rules():
        assert set(rule) == {"seriesQuery", "resources", "name", "metricsQuery"}
        assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        assert "<<.Series>>" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"]
        series = re.match(r"(\w+)\{", rule["seriesQuery"]).group(1)
        assert re.fullmatch(rule["name"]["matches"], series)
        exposed[rule["name"]["as"]] = series
    assert exposed == {m: m for m in SERVER_METRICS}


def test_hpa_scales_the_deployment_on_an_exposed_metric():
    (hpa,) = load("hpa.yaml")
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "quark-serve"}
    assert (spec["minReplicas"], spec["maxReplicas"]) == (1, 8)
    by_type = {m["type"]: m for m in spec["metrics"]}
    assert set(by_type) == {"Pods", "Resource"}
    assert by_type["Pods"]["pods"]["metric"]["name"] == "quark_queue_depth"
    assert by_type["Pods"]["pods"]["metric"]["name"] in {r["name"]["as"] for r in adapter_rules()}
    assert by_type["Resource"]["resource"]["name"] == "cpu"
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] > spec["behavior"]["scaleUp"][
        "stabilizationWindowSeconds"]
