"""The deployment files, checked as far as a machine without Docker, Kubernetes or systemd as PID 1 can.

- Dockerfile: what it COPYs exists; a slim two-stage build with a numeric non-root user, the
  spool volume, port, entrypoint and command; the HEALTHCHECK's python compiles and tells a
  serving daemon, a waiting standby, a stuck port and an error apart.
- The image's entrypoint: the image's two stages done in a venv (wheels of monitorme and its
  dependencies, a clean venv installing only those, pip and setuptools removed) run
  ``monitorme --help`` and ``monitorme check`` on the example ward files.
- deploy/kubernetes: parses as YAML, and its parts fit the image and the daemon (paths, ports,
  user, probes that leave a waiting standby alone, env keys the daemon knows).
- deploy/systemd: the template unit's settings; ``systemd-analyze verify`` where it exists.
- docs/operations.md: every metric it names is one the daemon exports; README links it.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monitorme.__main__ import build_parser
from monitorme.config import ENV_KEYS, load_settings
from monitorme.web.auth import TokenBook

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
K8S = ROOT / "deploy" / "kubernetes" / "monitorme-ward.yaml"
UNIT = ROOT / "deploy" / "systemd" / "monitorme@.service"
SYSTEMD_WARD = ROOT / "deploy" / "systemd" / "ward.toml.example"
STATE_DIR = "/var/lib/monitorme"


# -- Dockerfile ------------------------------------------------------------------------------
def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def exec_form(instruction: str, steps: list[tuple[str, str]]) -> list[str]:
    (args,) = [rest for word, rest in steps if word == instruction]
    value = json.loads(args)
    assert isinstance(value, list), f"{instruction} must be exec form"
    return value


def healthcheck_snippet() -> str:
    (args,) = [rest for word, rest in final_stage() if word == "HEALTHCHECK"]
    command = json.loads(args[args.index("CMD ") + 4:])
    assert command[:2] == ["python", "-c"], command
    return str(command[2])


def test_dockerfile_copies_what_exists_and_builds_in_two_stages() -> None:
    steps = instructions()
    copies = [shlex.split(rest) for word, rest in steps if word == "COPY" and "--from" not in rest]
    sources = [src for args in copies for src in args[:-1]]
    assert sources, "no COPY lines"
    for src in sources:
        assert (ROOT / src).exists(), src
    for needed in ("pyproject.toml", "monitorme", "pipelines", "rules", "migrations"):
        assert needed in sources, needed  # what the wheel (hatch force-include) is built from
    froms = [rest for word, rest in steps if word == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS build"), froms
    args = dict(rest.split("=", 1) for word, rest in steps if word == "ARG" and "=" in rest)
    assert args.get("PYTHON_IMAGE", "") == "python:3.11-slim"
    assert froms[1] == "${PYTHON_IMAGE}"
    final = " ".join(rest for _, rest in final_stage())
    assert "from=build" in final and "--no-index" in final  # only the wheels built above
    for tool in ("gcc", "build-essential", "apt-get install", "hatchling"):
        assert tool not in final, tool


def test_dockerfile_runtime_settings() -> None:
    final = final_stage()
    (user,) = [rest for word, rest in final if word == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and uid != "0", user  # numeric: runAsNonRoot can verify it
    env = " ".join(rest for word, rest in final if word == "ENV")
    assert f"STATE_DIRECTORY={STATE_DIR}" in env
    assert "MONITORME_HTTP=0.0.0.0:8080" in env
    assert json.loads(next(rest for word, rest in final if word == "VOLUME")) == [STATE_DIR]
    assert [rest for word, rest in final if word == "EXPOSE"] == ["8080"]
    assert exec_form("ENTRYPOINT", final) == ["monitorme"]
    command = exec_form("CMD", final)
    assert command == ["run", "--config", "/etc/monitorme/ward.toml"]
    args = build_parser().parse_args(command)
    assert args.func.__name__ == "cmd_run" and args.config == "/etc/monitorme/ward.toml"
    compile(healthcheck_snippet(), "HEALTHCHECK", "exec")


# -- the probes: HEALTHCHECK and the Kubernetes liveness exec probe --------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}')

    def log_message(self, *_args: Any) -> None:
        pass


class _Failing(_Handler):
    status = 500


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serving(handler: type[_Handler]) -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def _probe(snippet: str, port: int, *, k8s: bool) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITORME_")}
    if k8s:  # the liveness probe names the container's port; point it at the test's
        snippet = snippet.replace("8080", str(port))
    else:
        env["MONITORME_HTTP"] = f"0.0.0.0:{port}"
    return subprocess.run([sys.executable, "-c", snippet], env=env, capture_output=True, timeout=30).returncode


def liveness_snippet(doc: dict[str, Any]) -> str:
    command = container(doc)["livenessProbe"]["exec"]["command"]
    assert command[:2] == ["python", "-c"], command
    return str(command[2])


@pytest.mark.parametrize("where", ["HEALTHCHECK", "livenessProbe"])
def test_probe_tells_serving_standby_stuck_and_failing_apart(where: str) -> None:
    k8s = where == "livenessProbe"
    snippet = liveness_snippet(k8s_docs()["Deployment"]) if k8s else healthcheck_snippet()
    compile(snippet, where, "exec")
    for port in _serving(_Handler):
        assert _probe(snippet, port, k8s=k8s) == 0, "daemon answering /healthz"
    for port in _serving(_Failing):
        assert _probe(snippet, port, k8s=k8s) != 0, "/healthz answering 500"
    assert _probe(snippet, _free_port(), k8s=k8s) == 0, "nothing listening: a standby waiting for the lock"
    with socket.socket() as stuck:  # accepts (kernel backlog) but never answers
        stuck.bind(("127.0.0.1", 0))
        stuck.listen(8)
        assert _probe(snippet, stuck.getsockname()[1], k8s=k8s) != 0, "port open, no answer"


# -- the image's entrypoint in a clean venv --------------------------------------------------
@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's two stages without Docker: wheels of monitorme and its dependencies, then a clean
    venv installing only from them (``--no-index``), then pip and setuptools removed."""
    base = tmp_path_factory.mktemp("image")
    env = _clean_env()
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "-q", "--wheel-dir", str(base / "wheels"),
         str(ROOT)],
        capture_output=True, text=True, env=env,
    )
    if built.returncode and re.search(r"(?i)connection|network|resolve|no matching distribution", built.stderr):
        pytest.skip(f"dependencies not available here: {built.stderr.strip().splitlines()[-1]}")
    assert built.returncode == 0, built.stderr
    assert len(list((base / "wheels").glob("monitorme-*.whl"))) == 1
    subprocess.run([sys.executable, "-m", "venv", str(base / "venv")], check=True, capture_output=True, env=env)
    python = base / "venv" / "bin" / "python"
    installed = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-index", "--find-links",
                                str(base / "wheels"), "monitorme"], capture_output=True, text=True, env=env)
    assert installed.returncode == 0, installed.stderr
    subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "-q", "setuptools", "wheel", "pip"],
                   check=True, capture_output=True, env=env)
    return base / "venv"


def _clean_env() -> dict[str, str]:
    drop = ("MONITORME_", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIP_TARGET", "PIP_PREFIX")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def _entrypoint(venv: Path, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "monitorme"), *args], cwd=cwd, env={**_clean_env(), **env},
                          capture_output=True, text=True, timeout=60)


def test_entrypoint_runs_from_the_wheel_alone(venv: Path, tmp_path: Path) -> None:
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import monitorme, monitorme.runtime.app, monitorme.web.app; print(monitorme.__file__)"],
                           cwd=tmp_path, env=_clean_env(), capture_output=True, text=True)
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(str(venv)), where.stdout  # not the checkout
    helped = _entrypoint(venv, "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "run" in helped.stdout and "check" in helped.stdout


def test_example_ward_files_pass_check(venv: Path, tmp_path: Path) -> None:
    docs = k8s_docs()
    ward_toml = tmp_path / "ward.toml"
    ward_toml.write_text(docs["ConfigMap"]["data"]["ward.toml"])
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(docs["Secret"]["stringData"]["tokens.toml"])
    for config in (ward_toml, SYSTEMD_WARD):
        # The token file's path in the examples exists only where they are deployed: env wins.
        checked = _entrypoint(venv, "check", "--config", str(config), cwd=tmp_path, MONITORME_TOKENS=str(tokens))
        assert checked.returncode == 0, (config, checked.stderr)
        assert checked.stdout.startswith("config ok: ward w3;"), checked.stdout
    wrong = _entrypoint(venv, "check", "--config", str(tmp_path / "missing.toml"), cwd=tmp_path)
    assert wrong.returncode == 2 and "--config" in wrong.stderr


# -- Kubernetes ------------------------------------------------------------------------------
def k8s_docs() -> dict[str, dict[str, Any]]:
    yaml = pytest.importorskip("yaml")
    docs = [d for d in yaml.safe_load_all(K8S.read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    assert len(by_kind) == len(docs), "one object of each kind for one ward"
    return by_kind


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(only)


def test_kubernetes_example_fits_the_image_and_the_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = k8s_docs()
    assert set(docs) == {"ConfigMap", "Secret", "Deployment", "Service"}
    deployment = docs["Deployment"]
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    c = container(deployment)
    assert spec["replicas"] == 2
    assert spec["strategy"]["type"] == "Recreate"  # a waiting standby never becomes Ready
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()

    # the image: user, command, config path, port
    (user,) = [rest for word, rest in final_stage() if word == "USER"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == user.split(":")[0]
    assert c["args"] == exec_form("CMD", final_stage())
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/etc/monitorme/ward.toml"]["subPath"] == "ward.toml"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert STATE_DIR in mounts and "/tmp" in mounts  # the only writable places
    assert "emptyDir" in volumes[mounts[STATE_DIR]["name"]] or "persistentVolumeClaim" in volumes[
        mounts[STATE_DIR]["name"]]
    (port,) = c["ports"]
    assert port["containerPort"] == 8080
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port["containerPort"])
    assert annotations["prometheus.io/path"] == "/metrics"
    service = docs["Service"]["spec"]
    assert service["selector"] == spec["selector"]["matchLabels"]
    assert service["ports"][0]["targetPort"] in (port["name"], port["containerPort"])

    # probes: nothing HTTP that would kill a standby; readiness routes to the active daemon only
    assert "startupProbe" not in c
    assert set(c["livenessProbe"]) >= {"exec"} and "httpGet" not in c["livenessProbe"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/servingz"
    from monitorme.runtime.app import _SHUTDOWN_DEADLINE_S

    assert pod["terminationGracePeriodSeconds"] > _SHUTDOWN_DEADLINE_S + 10

    # the config and secrets: keys the daemon reads, paths that line up
    secret = docs["Secret"]["stringData"]
    for var in c["env"]:
        assert var["name"] in ENV_KEYS or var["name"] in ("PGPASSFILE",), var["name"]
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == docs["Secret"]["metadata"]["name"] and ref["key"] in secret
    ward_toml = tomllib.loads(docs["ConfigMap"]["data"]["ward.toml"])
    tokens_path = Path(ward_toml["http"]["tokens"])
    secret_mount = next(m for m in c["volumeMounts"] if volumes[m["name"]].get("secret"))
    assert tokens_path.parent == Path(secret_mount["mountPath"])
    items = {i["path"] for i in volumes[secret_mount["name"]]["secret"]["items"]}
    assert tokens_path.name in items
    assert ward_toml["http"]["listen"].endswith(f":{port['containerPort']}")
    assert ward_toml["ward"] == deployment["metadata"]["labels"]["monitorme/ward"]
    monkeypatch.setenv("STATE_DIRECTORY", STATE_DIR)  # as the image sets it: the spool is on the volume
    assert load_settings(None, {"MONITORME_WARD": ward_toml["ward"]}).spool_path == Path(STATE_DIR, "spool", "w3")
    TokenBook.from_toml(secret["tokens.toml"], "Secret tokens.toml")
    spool_limit = volumes[mounts[STATE_DIR]["name"]]["emptyDir"]["sizeLimit"]
    assert ward_toml["spool"]["max_bytes"] < int(spool_limit.removesuffix("Gi")) * 2**30


# -- systemd ---------------------------------------------------------------------------------
def unit_settings() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_systemd_unit_settings() -> None:
    unit = unit_settings()
    assert unit["Restart"] == ["always"]  # exit 75 (lease lost) must come back as the standby
    assert unit["StartLimitIntervalSec"] == ["0"]
    assert unit["StateDirectory"] == ["monitorme/%i"]
    assert "MONITORME_WARD=%i" in unit["Environment"]
    (exec_start,) = unit["ExecStart"]
    program, *args = shlex.split(exec_start)
    assert program.endswith("/bin/monitorme")
    parsed = build_parser().parse_args(args)
    assert parsed.func.__name__ == "cmd_run" and parsed.config == "/etc/monitorme/%i.toml"
    for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                       ("PrivateTmp", "yes"), ("DynamicUser", "yes")):
        assert unit[key] == [value], key
    credentials = dict(c.split(":", 1) for c in unit["LoadCredential"])
    assert "MONITORME_TOKENS=%d/tokens.toml" in unit["Environment"] and "tokens.toml" in credentials
    assert "PGPASSFILE=%d/pgpass" in unit["Environment"] and "pgpass" in credentials
    from monitorme.runtime.app import _SHUTDOWN_DEADLINE_S

    assert int(unit["TimeoutStopSec"][0]) > _SHUTDOWN_DEADLINE_S + 10


def test_systemd_analyze_verify(venv: Path, tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed")
    # verify checks that ExecStart is executable: point it at the venv built from the wheel
    text = re.sub(r"^ExecStart=\S+", f"ExecStart={venv}/bin/monitorme", UNIT.read_text(), flags=re.MULTILINE)
    (tmp_path / UNIT.name).write_text(text)
    verified = subprocess.run([tool, "verify", "--man=no", str(tmp_path / "monitorme@w3.service")],
                              capture_output=True, text=True, timeout=60)
    # Unknown keys and bad values are only warnings (exit 0): any line about our unit fails.
    ours = [line for line in (verified.stdout + verified.stderr).splitlines() if "monitorme@" in line]
    assert verified.returncode == 0 and not ours, verified.stdout + verified.stderr


# -- docs ------------------------------------------------------------------------------------
def test_operations_doc_names_real_metrics_and_is_linked() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    assert len(doc.splitlines()) <= 250
    source = "\n".join(p.read_text() for p in (ROOT / "monitorme").rglob("*.py"))
    exported = set(re.findall(r"\"(monitorme_[a-z0-9_]+)\"", source))
    named = {re.sub(r"_(bucket|count|sum)$", "", m) if m not in exported else m
             for m in re.findall(r"\bmonitorme_[a-z0-9_]+", doc)}
    assert named, "no metrics named"
    assert named <= exported, sorted(named - exported)
    for link in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc):
        assert (ROOT / "docs" / link).resolve().exists(), link
    readme = (ROOT / "README.md").read_text()
    assert "docs/operations.md" in readme and "deploy/" in readme
