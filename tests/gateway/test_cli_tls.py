"""`classguard serve --tls-cert --tls-key`: one school server serving https itself, alone
or as a group of workers; a certificate or key it cannot use is one error line."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .test_cli_e2e import free_port, start_serve, stop

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "gateway.cli"]


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "classguard test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(_key_pem(key))
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture
def env(tmp_path: Path, redis_url: str, redis_prefix: str) -> Iterator[dict[str, str]]:
    e = dict(os.environ, CLASSGUARD_DATA_DIR=str(tmp_path / "data"),
             CLASSGUARD_REDIS_URL=redis_url, CLASSGUARD_REDIS_PREFIX=redis_prefix)
    e.pop("CLASSGUARD_PUBLIC_URL", None)
    yield e


async def _get_over_tls(port: int, cafile: Path) -> tuple[int, str, str | None]:
    ctx = ssl.create_default_context(cafile=str(cafile))
    async with aiohttp.ClientSession() as s:
        r = await s.get(f"https://127.0.0.1:{port}/healthz", ssl=ctx)
        status, text = r.status, await r.text()
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    sslobj = writer.get_extra_info("ssl_object")
    writer.close()
    return status, text, sslobj.version() if sslobj else None


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_https_with_its_own_certificate(tmp_path: Path, env: dict[str, str],
                                              workers: str) -> None:
    cert, key = make_certificate(tmp_path)
    port = free_port()
    served = start_serve(env, port, tmp_path / "serve.log", "--tls-cert", str(cert),
                         "--tls-key", str(key), "--workers", workers)
    try:
        async def check() -> None:
            for _ in range(100):  # a group's workers bind one after another
                try:
                    status, _, version = await _get_over_tls(port, cert)
                    break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            assert status == 200
            assert version in ("TLSv1.2", "TLSv1.3")
            # plain http on the TLS port gets no page
            async with aiohttp.ClientSession() as s:
                with pytest.raises(aiohttp.ClientError):
                    await s.get(f"http://127.0.0.1:{port}/healthz")

        asyncio.run(check())
    finally:
        stop(served)
    # the printed address, derived from host and port, says https
    assert f"https://127.0.0.1:{port}" in served.log.read_text()


def test_context_refuses_tls_older_than_1_2(tmp_path: Path) -> None:
    from gateway.cli import tls_context

    ctx = tls_context(*make_certificate(tmp_path))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_NONE  # clients present no certificate


def test_unusable_certificate_or_key_is_one_line(tmp_path: Path, env: dict[str, str]) -> None:
    cert, key = make_certificate(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _, other_key = make_certificate(other)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = [
        (["--tls-cert", str(cert)], "--tls-cert and --tls-key go together"),
        (["--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(key)],
         "cannot read --tls-cert"),
        (["--tls-cert", str(cert), "--tls-key", str(tmp_path)], "cannot read --tls-key"),
        (["--tls-cert", str(cert), "--tls-key", str(other_key)], "is not the key of"),
        (["--tls-cert", str(garbage), "--tls-key", str(key)], "holds no PEM certificate"),
        (["--tls-cert", str(cert), "--tls-key", str(garbage)], "holds no usable PEM private"),
        (["--tls-cert", str(cert), "--tls-key", str(key), "--public-url",
          "http://127.0.0.1:8080"], "must be https://"),
    ]
    for extra in ([], ["--workers", "2"]):
        for args, expected in cases:
            res = subprocess.run(CLI + ["serve", "--port", str(free_port()), *args, *extra],
                                 env=env, capture_output=True, text=True, timeout=60,
                                 check=False)
            lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
            assert res.returncode == 2, (args, res.stderr)
            assert len(lines) == 1 and lines[0].startswith("classguard: error: "), lines
            assert expected in lines[0], (expected, lines)
