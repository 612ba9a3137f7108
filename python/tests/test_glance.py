"""imgpipe.openstack.fetch_to_raw against a real Glance, Barbican and Keystone (from PyPI,
started on 127.0.0.1 by scripts/services/{glance,barbican,keystone}.sh, as the Rust end-to-end
tests do).

Services missing -> skip, unless IMGPIPE_REQUIRE_ORACLES=1 (the test command), then fail.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import pytest

import imgpipe
from conftest import MIB, files_equal, patterned_raw, qemu_img, require_tool, sha512sum
from imgpipe.openstack import fetch_to_raw

REPO = Path(__file__).resolve().parents[2]
TOKEN = "gAAAAA-python-e2e-token-must-not-leak"


class Service:
    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.name = name
        self.workdir = tempfile.TemporaryDirectory(prefix=f"imgpipe-py-{name}-")
        script = REPO / "scripts" / "services" / f"{name}.sh"
        out = subprocess.run(
            ["bash", str(script), "start", "0", self.workdir.name],
            env={**os.environ, **env, "IMGPIPE_SERVICE_OWNER_PID": str(os.getpid())},
            capture_output=True, text=True,
        )
        lines = out.stdout.strip().splitlines()
        self.url = lines[-1].strip() if lines else ""
        if out.returncode != 0 or not self.url.startswith("http://127.0.0.1:"):
            self.stop()
            msg = f"{name}.sh start failed ({out.returncode}):\n{out.stderr[-3000:]}"
            if os.environ.get("IMGPIPE_REQUIRE_ORACLES") == "1":
                pytest.fail(msg)
            pytest.skip(msg)

    def stop(self) -> None:
        script = REPO / "scripts" / "services" / f"{self.name}.sh"
        subprocess.run(["bash", str(script), "stop", self.workdir.name], capture_output=True)
        self.workdir.cleanup()


def http(method: str, url: str, body: bytes = b"", ctype: str = "application/json") -> bytes:
    req = urllib.request.Request(url, data=body if method != "GET" else None, method=method,
                                 headers={"Content-Type": ctype})
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.read()


@pytest.fixture(scope="module")
def services():
    require_tool("openssl")
    glance = Service("glance", {})
    try:
        barbican = Service("barbican", {"IMGPIPE_BARBICAN_AUTH": "noauth"})
    except BaseException:
        glance.stop()
        raise
    yield glance, barbican
    barbican.stop()
    glance.stop()


def add_image(glance: str, disk_format: str, data: bytes, props: dict[str, str] | None = None
              ) -> str:
    rec = json.loads(http("POST", f"{glance}/v2/images", json.dumps(
        {"name": "imgpipe-py-test", "disk_format": disk_format,
         "container_format": "bare"}).encode()))
    http("PUT", f"{glance}/v2/images/{rec['id']}/file", data, "application/octet-stream")
    if props:
        ops = [{"op": "add", "path": f"/{k}", "value": v} for k, v in props.items()]
        http("PATCH", f"{glance}/v2/images/{rec['id']}", json.dumps(ops).encode(),
             "application/openstack-images-v2.1-json-patch")
    return rec["id"]


def signing_cert(d: Path) -> tuple[Path, bytes]:
    key, cert = d / "key.pem", d / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:3072", "-nodes", "-subj",
                    "/CN=imgpipe-py-e2e", "-days", "2", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return key, cert.read_bytes()


def sign_pss(d: Path, key: Path, data: bytes) -> str:
    f = d / "to-sign"
    f.write_bytes(data)
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(key), "-sigopt",
                          "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:max", str(f)],
                         check=True, capture_output=True).stdout
    return base64.b64encode(sig).decode()


def store_cert(barbican: str, pem: bytes) -> str:
    body = {"name": "imgpipe-py-e2e-cert", "secret_type": "certificate",
            "payload": base64.b64encode(pem).decode(),
            "payload_content_type": "application/octet-stream",
            "payload_content_encoding": "base64"}
    ref = json.loads(http("POST", f"{barbican}/v1/secrets", json.dumps(body).encode()))
    return ref["secret_ref"].rsplit("/", 1)[-1]


def test_signed_qcow2_from_glance_becomes_the_raw_disk(services, dirs, capfd):
    glance, barbican = services
    images, sink = dirs
    src = patterned_raw(images / "src.raw", 32 * MIB, seed=3)
    qcow2 = images / "image.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(src), str(qcow2))
    expected = images / "expected.raw"
    qemu_img("convert", "-f", "qcow2", "-O", "raw", str(qcow2), str(expected))
    data = qcow2.read_bytes()
    key, pem = signing_cert(images)
    cert_uuid = store_cert(barbican.url, pem)
    signed = {
        "img_signature": sign_pss(images, key, data),
        "img_signature_hash_method": "SHA-256",
        "img_signature_key_type": "RSA-PSS",
        "img_signature_certificate_uuid": cert_uuid,
    }
    image_id = add_image(glance.url, "qcow2", data, signed)
    cache = images / "cache"
    cache.mkdir(mode=0o700)

    # 1. Signed qcow2: signature (certificate from Barbican), Glance's sha512 and size, decoded.
    out = sink / "disk.raw"
    seen: list[imgpipe.ProgressInfo] = []
    report = fetch_to_raw(TOKEN, glance.url, image_id, out, barbican_endpoint=barbican.url,
                          cache_dir=cache, progress=seen.append)
    assert report.ok, report
    for check in ("signature", "digest.sha512", "size"):
        assert check in report.passed, (check, report.passed)
    assert report.format == "qcow2" and report.bytes_read == len(data)
    assert report.hashes["sha512"] == sha512sum(qcow2)
    assert files_equal(out, expected), "the disk differs from qemu-img convert -O raw"
    assert seen and seen[-1].stage == "done"
    assert TOKEN not in json.dumps(report.to_dict())
    assert not [k for k in os.environ if k.startswith("IMGPIPE_PY_")], "secret env var left"
    out.unlink()

    # 2. The same image again: served by the cache, re-verified on its way to the disk.
    again = fetch_to_raw(TOKEN, glance.url, image_id, out, barbican_endpoint=barbican.url,
                         cache_dir=cache)
    assert "cache.hit" in again.passed, again.passed
    assert files_equal(out, expected)
    out.unlink()

    # 3. A valid signature of other bytes: rejected, nothing published.
    bad = dict(signed, img_signature=sign_pss(images, key, b"not the image"))
    bad_id = add_image(glance.url, "qcow2", data, bad)
    with pytest.raises(imgpipe.ImageRejected) as ei:
        fetch_to_raw(TOKEN, glance.url, bad_id, out, barbican_endpoint=barbican.url)
    assert ei.value.kind == "bad_signature", ei.value.report
    assert os.listdir(sink) == []

    # 4. Signature verification on, unsigned image: refused before any byte is read.
    plain_id = add_image(glance.url, "qcow2", data)
    with pytest.raises(imgpipe.ImageRejected) as ei:
        fetch_to_raw(TOKEN, glance.url, plain_id, out, barbican_endpoint=barbican.url)
    assert ei.value.check == "signature.missing" and ei.value.phase == "before_streaming"
    assert os.listdir(sink) == []

    # 5. Bytes changed in Glance's store under an unsigned image: Glance's own sha512 rejects.
    stored = Path(glance.workdir.name) / "images" / plain_id
    blob = bytearray(stored.read_bytes())
    assert bytes(blob) == data, "Glance's file store layout changed"
    at = blob.find(b"IMGPIPE-TAMPER-MARKER")
    blob[at + 5] ^= 1
    stored.write_bytes(bytes(blob))
    with pytest.raises(imgpipe.ImageRejected) as ei:
        fetch_to_raw(TOKEN, glance.url, plain_id, out)
    assert ei.value.check == "digest.sha512", ei.value.report
    assert os.listdir(sink) == []

    captured = capfd.readouterr()
    assert TOKEN not in captured.out and TOKEN not in captured.err


@pytest.fixture(scope="module")
def keystone():
    ks = Service("keystone", {})
    yield ks
    ks.stop()


def keystone_admin_token(ks: str) -> str:
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "admin", "domain": {"name": "Default"}, "password": "secret"}}},
        "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}}
    req = urllib.request.Request(f"{ks}/auth/tokens", data=json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.headers["X-Subject-Token"]


def register(ks: str, token: str, service_type: str, url: str) -> None:
    def post(path: str, body: dict) -> dict:
        req = urllib.request.Request(f"{ks}/{path}", data=json.dumps(body).encode(),
                                     method="POST", headers={"Content-Type": "application/json",
                                                             "X-Auth-Token": token})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    sid = post("services", {"service": {"type": service_type, "name": service_type}})
    post("endpoints", {"endpoint": {"service_id": sid["service"]["id"], "interface": "public",
                                    "region_id": "RegionOne", "url": url}})


def test_keystone_login_finds_glance_and_barbican_in_the_catalog(services, keystone, dirs):
    """What a driver with only service credentials does: log in, find the image and key
    manager endpoints in the catalog, and verify a signed image with no signature settings."""
    glance, barbican = services
    images, sink = dirs
    token = keystone_admin_token(keystone.url)
    register(keystone.url, token, "image", glance.url)
    register(keystone.url, token, "key-manager", barbican.url)

    src = patterned_raw(images / "src.raw", 8 * MIB, seed=5)
    qcow2 = images / "image.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(src), str(qcow2))
    data = qcow2.read_bytes()
    key, pem = signing_cert(images)
    image_id = add_image(glance.url, "qcow2", data, {
        "img_signature": sign_pss(images, key, data),
        "img_signature_hash_method": "SHA-256",
        "img_signature_key_type": "RSA-PSS",
        "img_signature_certificate_uuid": store_cert(barbican.url, pem),
    })
    creds = {"auth_url": keystone.url, "username": "admin", "password": "secret",
             "project_name": "admin"}
    out = sink / "disk.raw"
    report = fetch_to_raw(None, None, image_id, out, keystone=creds)
    assert report.ok and "signature" in report.passed, report
    expected = images / "expected.raw"
    qemu_img("convert", "-f", "qcow2", "-O", "raw", str(qcow2), str(expected))
    assert files_equal(out, expected)
    assert not [k for k in os.environ if k.startswith("IMGPIPE_PY_")], "secret env var left"
    out.unlink()

    with pytest.raises(imgpipe.PipelineError) as ei:  # exit status 1, as the CLI
        fetch_to_raw(None, None, image_id, out, keystone=dict(creds, password="wrong-pw-xyz"))
    assert ei.value.report.check == "keystone.auth", ei.value.report
    assert "wrong-pw-xyz" not in str(ei.value) and "wrong-pw-xyz" not in ei.value.report.reason
    assert os.listdir(sink) == []
