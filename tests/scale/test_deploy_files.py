"""The deployment examples (deploy/): they parse, name only settings that exist, give a
stopping instance time to drain, and the nginx configuration passes `nginx -t`. (Running
them needs Docker or a cluster; the tests beside this file run the same arrangement on
loopback.)"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from callbridge.config import Settings, setting_names

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# The agents' goodbyes and the hang-ups after DRAIN_SECONDS (server/lifecycle.py).
AFTER_DRAIN_SECONDS = 25 + 5


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _callbridge_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if n.startswith("callbridge")}


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)s", text)
    assert match, text
    return float(match.group(1))


def test_compose_runs_three_instances_with_redis_postgres_and_nginx() -> None:
    compose = _compose()
    services = _callbridge_services(compose)
    assert len(services) == 3
    assert {"nginx", "postgres", "redis"} <= set(compose["services"])
    ids = set()
    for service in services.values():
        env = service["environment"]
        unknown = set(env) - setting_names()
        assert not unknown, f"not callbridge settings: {sorted(unknown)}"
        given = {k.lower(): _value(v) for k, v in env.items()}
        Settings(_env_file=None, **{k: v for k, v in given.items() if v != ""})  # type: ignore[call-arg]
        assert env["REDIS_URL"].startswith("redis://redis:")
        assert env["DATABASE_URL"].startswith("postgresql://")
        drain = float(env["DRAIN_SECONDS"])
        assert _seconds(service["stop_grace_period"]) >= drain + AFTER_DRAIN_SECONDS
        ids.add(env["CALLBRIDGE_INSTANCE_ID"])
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
    assert len(ids) == 3, "each instance needs its own CALLBRIDGE_INSTANCE_ID"
    nginx = (DEPLOY / "nginx.conf").read_text()
    for name in services:
        assert f"server {name}:3000" in nginx
    assert (DEPLOY / "Dockerfile").is_file()


def test_each_compose_instance_has_its_own_url_routed_to_it_alone() -> None:
    nginx = (DEPLOY / "nginx.conf").read_text()
    for name, service in _callbridge_services(_compose()).items():
        own = _value(service["environment"]["CALLBRIDGE_INSTANCE_URL"])
        assert own == f"https://calls.example.com/i/{name}"
        # The path, prefix stripped (proxy_pass ending in /), to an upstream of it alone.
        location = re.search(rf"location /i/{name}/ {{ proxy_pass http://([\w-]+)/; }}", nginx)
        assert location, f"no location /i/{name}/ in nginx.conf"
        upstream = nginx.split(f"upstream {location.group(1)} {{", 1)[1].split("}", 1)[0]
        assert [s.strip() for s in upstream.split(";") if s.strip()] == [f"server {name}:3000"]


def _value(text: object) -> object:
    """A compose value as an operator starts it: required variables (`${VAR:?...}`) given,
    the others (`${VAR:-default}`) left to their defaults."""
    if not isinstance(text, str):
        return text

    def filled(match: re.Match[str]) -> str:
        name, kind, rest = match.groups()
        if kind == ":-":
            return rest
        return "https://calls.example.com" if name == "PUBLIC_URL" else "given"

    return re.sub(r"\$\{(\w+)(:[-?])([^}]*)\}", filled, text)


def test_nginx_passes_websocket_upgrades_and_tries_the_next_instance() -> None:
    nginx = (DEPLOY / "nginx.conf").read_text()
    assert "proxy_set_header Upgrade $http_upgrade;" in nginx
    assert "proxy_set_header Connection $connection_upgrade;" in nginx
    assert "proxy_http_version 1.1;" in nginx
    assert "proxy_next_upstream error" in nginx
    upstream = nginx.split("upstream callbridge", 1)[1].split("}", 1)[0]
    directives = [line.split("#", 1)[0].strip() for line in upstream.splitlines()]
    assert not [d for d in directives if d.startswith("keepalive")]


def test_nginx_conf_is_accepted_by_nginx(tmp_path: Path, nginx_binary: str) -> None:
    # The instances' names resolve only inside compose: loopback stands in for them.
    conf = (DEPLOY / "nginx.conf").read_text()
    conf = re.sub(r"server callbridge-\d:3000", "server 127.0.0.1:3000", conf)
    conf = conf.replace("listen 80;", "listen 127.0.0.1:8080;")
    # And temporary files here, not in the system's folders (a user may not write there).
    temp = " ".join(
        f"{kind}_temp_path {tmp_path}/{kind};" for kind in ("client_body", "proxy", "fastcgi")
    )
    conf = conf.replace(
        "http {", f"http {{ {temp} uwsgi_temp_path {tmp_path}/u; scgi_temp_path {tmp_path}/s;", 1
    )
    (tmp_path / "nginx.conf").write_text(conf)
    done = subprocess.run(
        [
            nginx_binary,
            "-t",
            "-p",
            str(tmp_path),
            "-e",
            "stderr",
            "-c",
            str(tmp_path / "nginx.conf"),
            "-g",
            f"pid {tmp_path}/nginx.pid; error_log stderr;",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr


def _kubernetes() -> list[dict[str, Any]]:
    documents = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        documents += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return documents


def test_kubernetes_deployment_drains_and_is_ready_on_readyz() -> None:
    documents = _kubernetes()
    kinds = {d["kind"]: d for d in documents}
    assert {"Deployment", "Service", "Secret"} <= set(kinds)
    deployment = kinds["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    secret = kinds["Secret"]["stringData"]
    unknown = (set(env) | set(secret)) - setting_names()
    assert not unknown, f"not callbridge settings: {sorted(unknown)}"
    assert {"REDIS_URL", "DATABASE_URL", "PUBLIC_URL", "TWILIO_AUTH_TOKEN"} <= set(secret)
    assert "valueFrom" in next(e for e in container["env"] if e["name"] == "CALLBRIDGE_INSTANCE_ID")
    drain = float(env["DRAIN_SECONDS"])
    pre_stop = 5
    assert pod["terminationGracePeriodSeconds"] >= drain + AFTER_DRAIN_SECONDS + pre_stop
    readiness = container["readinessProbe"]["httpGet"]
    assert readiness["path"] == "/readyz"
    port = {p["name"]: p["containerPort"] for p in container["ports"]}[readiness["port"]]
    assert str(port) == env["PORT"]
    liveness = container["livenessProbe"]
    # A draining pod stops listening: liveness must not kill it inside the grace period.
    assert (
        liveness["periodSeconds"] * liveness["failureThreshold"]
        > (pod["terminationGracePeriodSeconds"])
    )
    service = kinds["Service"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == readiness["port"]


@pytest.mark.parametrize("path", ["docker-compose.yml", "kubernetes/deployment.yaml"])
def test_deployment_files_name_the_scaling_guide(path: str) -> None:
    assert "docs/scaling.md" in (DEPLOY / path).read_text()
