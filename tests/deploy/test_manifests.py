"""The deployment files say what the issue and the operator guide promise: the compose
file is valid, the Kubernetes manifests have probes, replicas, a disruption budget, an
unprivileged security context, resources and keys from a Secret; the image is
multi-stage, non-root and secret-free; the systemd unit is hardened; the nginx template
renders to a configuration nginx accepts."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require_program

from .cluster import (
    DEPLOY,
    NGINX_TEMPLATE,
    nginx_test_config,
    template_variables,
    write_nginx,
)

K8S = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
UNIT = DEPLOY / "systemd" / "classguard.service"


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    objs = {}
    for f in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if doc and "apiVersion" in doc:
                objs[(doc["kind"], doc["metadata"]["name"] if "metadata" in doc else f.name)] = doc
    return objs


# --- compose ----------------------------------------------------------------------------


def test_compose_is_valid() -> None:
    """docker-compose (Debian's) validates against the Compose schema without an engine."""
    compose = require_program("docker-compose")
    res = subprocess.run([compose, "-f", str(COMPOSE), "config"], capture_output=True,
                         text=True, timeout=60, check=False,
                         env={"PATH": "/usr/bin:/bin", "CLASSGUARD_DOMAIN": "cg.example.org"})
    assert res.returncode == 0, res.stderr
    resolved = yaml.safe_load(res.stdout)
    services = resolved["services"]
    gateways = [n for n, s in services.items() if s.get("command") != ["init"]
                and "classguard" in str(s.get("image", ""))]
    assert len(gateways) >= 2, gateways
    nginx_ip = services["nginx"]["networks"]["front"]["ipv4_address"]
    for name in gateways:
        env = services[name]["environment"]
        assert env["CLASSGUARD_REDIS_URL"].startswith("redis://redis:")
        assert env["CLASSGUARD_TRUSTED_PROXIES"] == f"{nginx_ip}/32"
        assert env["CLASSGUARD_PUBLIC_URL"] == "https://cg.example.org"
        assert "redis" in services[name]["depends_on"]
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "--appendfsync always" in redis_cmd
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    assert sorted(t.split(":")[0] for t in targets) == sorted(gateways)
    nginx_env = services["nginx"]["environment"]
    assert set(nginx_env) >= template_variables(NGINX_TEMPLATE.read_text())
    for name in gateways:
        assert f"server {name}:8080" in nginx_env["CLASSGUARD_UPSTREAM_SERVERS"]


# --- Kubernetes -------------------------------------------------------------------------


def test_kubernetes_deployment() -> None:
    objs = k8s_objects()
    dep = objs[("Deployment", "classguard")]
    spec = dep["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    (gw,) = [c for c in pod["containers"] if c["name"] == "gateway"]
    assert gw["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gw["readinessProbe"]["httpGet"]["path"] == "/readyz"
    sc = gw["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    for c in pod["containers"] + pod["initContainers"]:
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
        assert c["resources"]["limits"]["memory"]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
    # Keys: every replica copies the same Secrets into its data dir, mode 0600.
    secret_volumes = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert set(secret_volumes.values()) == {"classguard-join-keys", "classguard-keys"}
    (init,) = pod["initContainers"]
    script = " ".join(init["command"])
    assert "install -m 0600" in script and "/data/keys/join" in script
    mounts = {m["name"] for m in init["volumeMounts"]}
    assert set(secret_volumes) <= mounts
    env = {e["name"]: e for e in gw.get("env", [])}
    assert env["CLASSGUARD_DATA_DIR"]["value"] == "/data"
    assert "secretKeyRef" in env["CLASSGUARD_REDIS_URL"]["valueFrom"]
    assert env["CLASSGUARD_NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    cm = objs[("ConfigMap", "classguard-settings")]["data"]
    assert cm["CLASSGUARD_PUBLIC_URL"].startswith("https://")
    assert cm["CLASSGUARD_TRUSTED_PROXIES"] not in ("0.0.0.0/0", "::/0")
    assert not any(k in cm for k in ("CLASSGUARD_REDIS_URL",)), "passwords belong in a Secret"


def test_kubernetes_budget_service_ingress() -> None:
    objs = k8s_objects()
    dep = objs[("Deployment", "classguard")]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    pdb = objs[("PodDisruptionBudget", "classguard")]["spec"]
    assert pdb["minAvailable"] >= 1 and pdb["minAvailable"] < dep["spec"]["replicas"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    svc = objs[("Service", "classguard")]["spec"]
    assert svc["selector"].items() <= labels.items()
    ing = objs[("Ingress", "classguard")]
    ann = ing["metadata"]["annotations"]
    assert int(ann["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600  # WebSockets
    assert ing["spec"]["tls"]
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "classguard"
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for f in kust["resources"]:
        assert (K8S / f).exists(), f
    assert "secret.example.yaml" not in kust["resources"]  # never deploy placeholders


# --- image ------------------------------------------------------------------------------


def test_dockerfile() -> None:
    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M | re.I)
    assert len(froms) >= 2, "multi-stage build"
    final = text.split("\nFROM ")[-1]
    users = re.findall(r"^USER\s+(\S+)", final, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*", final, re.M) and "/healthz" in final
    assert re.search(r'^VOLUME \["/data"\]', final, re.M)
    assert "CLASSGUARD_DATA_DIR=/data" in final
    # No secrets baked in: no key material copied, no secret-looking ENV/ARG values.
    assert not re.search(r"^(ENV|ARG)\s+.*(PASSWORD|SECRET|TOKEN|KEY)\w*=", text, re.M | re.I)
    assert not re.search(r"^COPY\s+.*(\.pem|\.key|classguard-data|keys)", text, re.M)
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*")] == "*"  # everything excluded unless listed


# --- systemd ----------------------------------------------------------------------------


def _unit_directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            k, v = line.split("=", 1)
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_systemd_unit_is_hardened() -> None:
    d = _unit_directives()
    assert d["DynamicUser"] == ["yes"] or d.get("User", ["root"])[0] != "root"
    for key, value in {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "PrivateDevices": "yes", "RestrictSUIDSGID": "yes",
        "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes", "LockPersonality": "yes", "UMask": "0077",
        "StateDirectory": "classguard",
    }.items():
        assert d.get(key) == [value], key
    assert d["CapabilityBoundingSet"] == [""]
    assert "@system-service" in d["SystemCallFilter"]
    assert d["ExecStart"][0].endswith("classguard serve")
    env = dict(e.split("=", 1) for e in d["Environment"])
    assert env["CLASSGUARD_DATA_DIR"] == "/var/lib/classguard"  # the StateDirectory
    assert "CLASSGUARD_REDIS_URL" not in env  # a single school server: embedded Redis


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = require_program("systemd-analyze")
    # verify insists that ExecStart exists; point it at a stand-in for the installed
    # console script (everything else is verified as shipped).
    exe = tmp_path / "classguard"
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} -m gateway.cli \"$@\"\n")
    exe.chmod(0o755)
    unit = tmp_path / "classguard.service"
    unit.write_text(UNIT.read_text().replace("/opt/classguard/bin/classguard", str(exe)))
    res = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                         timeout=60, check=False)
    problems = [line for line in (res.stdout + res.stderr).splitlines()
                if "classguard.service" in line]
    assert res.returncode == 0 and not problems, res.stdout + res.stderr


# --- nginx ------------------------------------------------------------------------------


def test_nginx_template_renders_to_a_valid_config(tmp_path: Path) -> None:
    nginx = require_program("nginx")
    ng = write_nginx(tmp_path, {"lb": [18081, 18082]})
    res = nginx_test_config(nginx, ng)
    assert res.returncode == 0, res.stderr
    text = ng.conf.read_text()
    assert "${" not in text
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in text
    assert "proxy_set_header Upgrade $http_upgrade;" in text
    assert "proxy_set_header Connection $classguard_connection;" in text


def test_nginx_production_shape_with_tls(tmp_path: Path) -> None:
    """The compose rendering (443 ssl + tls.conf + http redirect) is accepted by nginx,
    with a throwaway self-signed certificate."""
    nginx = require_program("nginx")
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    tls = tmp_path / "tls"
    tls.mkdir()
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    "/CN=cg.test", "-keyout", str(tls / "privkey.pem"),
                    "-out", str(tls / "fullchain.pem")], check=True, capture_output=True)
    snippet = tmp_path / "tls.conf"
    snippet.write_text((DEPLOY / "nginx" / "tls.conf").read_text()
                       .replace("/etc/nginx/tls", str(tls)))
    from .cluster import nginx_site

    site = nginx_site(upstream="classguard", servers=["127.0.0.1:18081", "127.0.0.1:18082"],
                      listen="127.0.0.1:18443 ssl", access_log=tmp_path / "a.log",
                      tls_include=snippet, server_name="cg.test")
    redirect = (DEPLOY / "nginx" / "redirect.conf").read_text().replace(
        "listen 80 default_server", "listen 127.0.0.1:18080 default_server")
    ng = write_nginx(tmp_path / "ng", {})
    conf = ng.conf.read_text().rstrip().removesuffix("}") + site + redirect + "\n}\n"
    ng.conf.write_text(conf)
    res = nginx_test_config(nginx, ng)
    assert res.returncode == 0, res.stderr
