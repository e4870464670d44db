"""``deploy/`` starts (issue 15 part 7), checked without a container engine: the compose files and
Dockerfiles are read, and every path, port, command and config key they imply is held against
the code — the example configs validate, the models are found at ``models.root`` laid out as
the Dockerfile copies them, ports agree between compose, config, Dockerfile and healthchecks,
and the healthcheck command itself answers for a running node and fails for a stopped one."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from node.cli import build_parser
from node.config import Config, load_config
from node.infer.manifest import load_manifest, resolve_model_dir
from tests.conftest import free_port
from tests.node_proc import NodeProcess, make_node, wait_for  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
RESTART_POLICIES = {"always", "unless-stopped", "on-failure"}
NODE_SERVICES = ("receive", "work")


@dataclass
class Dockerfile:
    """What a Dockerfile lays out: each COPY's source → absolute destination, and the rest."""

    copies: dict[str, PurePosixPath] = field(default_factory=dict)
    runs: list[str] = field(default_factory=list)
    expose: set[int] = field(default_factory=set)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    workdir: PurePosixPath = field(default_factory=lambda: PurePosixPath("/"))
    user: str = "root"


def read_dockerfile(path: Path) -> Dockerfile:
    out = Dockerfile()
    text = path.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "WORKDIR":
            out.workdir = out.workdir / rest.strip()
        elif op == "COPY":
            *sources, dest = shlex.split(rest)
            target = out.workdir / dest
            for src in sources:
                out.copies[src.rstrip("/")] = target / src if dest.endswith("/") or len(sources) > 1 else target
        elif op == "RUN":
            out.runs.append(rest)
        elif op == "EXPOSE":
            out.expose |= {int(p.split("/")[0]) for p in rest.split()}
        elif op == "ENTRYPOINT":
            out.entrypoint = json.loads(rest)
        elif op == "CMD":
            out.cmd = json.loads(rest)
        elif op == "USER":
            out.user = rest.strip()
    return out


def compose(name: str = "docker-compose.yml") -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / name).read_text())
    return data


def config_flag(argv: list[str]) -> str:
    return argv[argv.index("--config") + 1]


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path → host path or named volume."""
    out = {}
    for spec in service.get("volumes", []):
        source, target, *_ = spec.split(":")
        out[target] = source
    return out


def container_port(spec: str) -> int:
    return int(str(spec).split(":")[-1].split("/")[0])


def env(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in service.get("environment", {}).items()}


@pytest.fixture(scope="module")
def cpu() -> tuple[dict[str, Any], Dockerfile, Config]:
    return compose(), read_dockerfile(DEPLOY / "Dockerfile"), load_config(DEPLOY / "config.example.yaml")


def test_example_configs_validate_and_differ_only_in_provider() -> None:
    cpu_cfg = load_config(DEPLOY / "config.example.yaml")
    gpu_cfg = load_config(DEPLOY / "config.gpu.example.yaml")
    assert cpu_cfg.models.provider == "cpu" and gpu_cfg.models.provider == "cuda"
    a, b = cpu_cfg.model_dump(), gpu_cfg.model_dump()
    b["models"]["provider"] = "cpu"
    assert a == b, "config.gpu.example.yaml must stay config.example.yaml with models.provider: cuda"


@pytest.mark.parametrize("dockerfile,config", [("Dockerfile", "config.example.yaml"), ("Dockerfile.gpu", "config.gpu.example.yaml")])
def test_models_are_found_where_the_dockerfile_copies_them(tmp_path: Path, dockerfile: str, config: str) -> None:
    image = read_dockerfile(DEPLOY / dockerfile)
    cfg = load_config(DEPLOY / config)
    assert image.copies.get("models") == PurePosixPath(cfg.models.root), (image.copies, cfg.models.root)
    for src in image.copies:
        assert (ROOT / src).exists(), f"{dockerfile}: COPY {src} does not exist in the build context"
    # Lay the weights out as the image does, under a scratch root, and resolve every model.
    root = tmp_path / str(cfg.models.root).lstrip("/")
    root.parent.mkdir(parents=True)
    root.symlink_to(ROOT / "models", target_is_directory=True)
    names = [n for n in (*cfg.models.triage_names, cfg.models.detector, *cfg.models.morphology) if n]
    assert names
    for name in names:
        manifest = load_manifest(resolve_model_dir(root, name))
        assert manifest.model_path.is_file(), manifest.model_path
    if cfg.models.provider == "cpu":  # open the sessions as the worker does at start-up
        from node.pipeline import Models

        Models(cfg.model_copy(update={"models": cfg.models.model_copy(update={"root": root})}))
    else:
        assert any("onnxruntime-gpu" in r for r in image.runs), "the GPU image must install onnxruntime-gpu"
        assert any("uninstall -y onnxruntime" in r for r in image.runs), "…and remove the CPU wheel it replaces"


def test_every_service_restarts_and_has_a_healthcheck(cpu: tuple[dict[str, Any], Dockerfile, Config]) -> None:
    spec, _image, _cfg = cpu
    services = spec["services"]
    assert set(services) == {"postgres", "orthanc", *NODE_SERVICES}
    for name, service in services.items():
        assert service.get("restart") in RESTART_POLICIES, f"{name}: no restart policy"
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name}: no healthcheck"
    pg = services["postgres"]
    check = pg["healthcheck"]["test"]
    assert check[1] == "pg_isready"
    assert check[check.index("-U") + 1] == env(pg)["POSTGRES_USER"]
    assert check[check.index("-d") + 1] == env(pg)["POSTGRES_DB"]
    assert services["work"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["receive"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_node_services_run_real_commands_with_the_mounted_config(cpu: tuple[dict[str, Any], Dockerfile, Config]) -> None:
    spec, image, cfg = cpu
    parser = build_parser()
    config_path = config_flag(image.entrypoint)
    assert image.entrypoint[0] == "hipnode"
    for name in NODE_SERVICES:
        service = spec["services"][name]
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        command = service["command"]
        args = parser.parse_args([*image.entrypoint[1:], *command])
        assert args.command == name
        # The config the entrypoint reads is the example, mounted read-only.
        host = mounts(service)[config_path]
        assert (DEPLOY / host).resolve() == (DEPLOY / "config.example.yaml").resolve()
        # The healthcheck is `hipnode health <role>` with the same config, for this service's role.
        test = service["healthcheck"]["test"][1:]
        hc = parser.parse_args(test[1:])
        assert test[0] == "hipnode" and hc.command == "health" and hc.role == name
        assert config_flag(test) == config_path
        # Storage and results live on the shared named volume, at the image's state directory.
        volume_targets = [t for t, src in mounts(service).items() if src in spec["volumes"]]
        for path in (cfg.storage.root, cfg.outputs.root):
            assert any(PurePosixPath(path).is_relative_to(t) for t in volume_targets), (name, path)
    assert image.workdir == PurePosixPath("/var/lib/hipnode") and image.user == "hipnode"
    assert mounts(spec["services"]["receive"])["/var/lib/hipnode"] == mounts(spec["services"]["work"])["/var/lib/hipnode"]


def test_ports_agree_between_compose_config_image_and_orthanc(cpu: tuple[dict[str, Any], Dockerfile, Config]) -> None:
    spec, image, cfg = cpu
    services = spec["services"]
    assert [container_port(p) for p in services["receive"]["ports"]] == [cfg.node.port]
    assert "ports" not in services["work"], "the worker listens on nothing but its metrics"
    assert {cfg.node.port, cfg.metrics.port, cfg.metrics.work_port} <= image.expose
    assert cfg.metrics.port != cfg.metrics.work_port
    # Our destination is the compose Orthanc, as Orthanc is configured.
    orthanc = env(services["orthanc"])
    (dest,) = cfg.destinations
    assert dest.host == "orthanc" and dest.ae_title == orthanc["ORTHANC__DICOM_AET"]
    assert dest.port == int(orthanc.get("ORTHANC__DICOM_PORT", "4242"))
    assert dest.port in [container_port(p) for p in services["orthanc"]["ports"]]
    # Orthanc's entry for us names our AE title, our service and our port; and it may send to us.
    ((ae, host, port),) = json.loads(orthanc["ORTHANC__DICOM_MODALITIES"]).values()
    assert (ae, host, port) == (cfg.node.ae_title, "receive", cfg.node.port)
    assert cfg.allow_any_calling_ae or cfg.calling_ae(orthanc["ORTHANC__DICOM_AET"]) is not None
    # The registry is the compose PostgreSQL with its credentials.
    from sqlalchemy.engine import make_url

    url, pg = make_url(cfg.database.url), env(services["postgres"])
    assert (url.host, url.port or 5432) == ("postgres", 5432)
    assert (url.username, url.password, url.database) == (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"])


def test_gpu_override_gives_the_worker_the_gpu_image_and_config(cpu: tuple[dict[str, Any], Dockerfile, Config]) -> None:
    spec, image, _cfg = cpu
    gpu = compose("docker-compose.gpu.yml")["services"]
    assert set(gpu) == {"work"}
    work = gpu["work"]
    assert (DEPLOY / work["build"]["context"] / work["build"]["dockerfile"]).is_file()
    gpu_image = read_dockerfile(DEPLOY / work["build"]["context"] / work["build"]["dockerfile"])
    assert gpu_image.entrypoint == image.entrypoint and gpu_image.workdir == image.workdir
    config_path = config_flag(gpu_image.entrypoint)
    assert (DEPLOY / mounts(work)[config_path]).resolve() == (DEPLOY / "config.gpu.example.yaml").resolve()
    assert mounts(work)["/var/lib/hipnode"] == mounts(spec["services"]["work"])["/var/lib/hipnode"]
    (device,) = work["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


@pytest.mark.slow
def test_healthcheck_command_answers_for_a_running_node(make_node: Any) -> None:  # noqa: F811
    """The exact command the compose healthchecks run, against a node started as the operator
    starts it: healthy while it runs, unhealthy for the role it is not, and once stopped."""
    node: NodeProcess = make_node(metrics={"enabled": True, "port": free_port(), "work_port": free_port()})

    def health(role: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "node.cli", "--config", str(node.config_path), "health", role],
            capture_output=True,
            text=True,
            timeout=60,
        )

    ok = health("run")
    assert ok.returncode == 0, ok.stderr
    wrong = health("work")  # nothing serves metrics.work_port in a `run` node
    assert wrong.returncode == 1 and "unhealthy" in wrong.stderr
    node.stop()
    down = health("receive")
    assert down.returncode == 1
    assert "DICOM port" in down.stderr and "/metrics" in down.stderr
