"""Nova-shaped helpers: a Glance image to an instance disk in one verified call.

``fetch_to_raw`` does in one pass what Nova's libvirt driver does today in several:
``nova.virt.images.fetch_to_raw`` (download to ``PATH.part``, ``format_inspector`` safety checks,
``qemu-img convert`` to raw, rename), the image cache (``[cache]``: a hit is re-verified on its
way to the disk) and ``nova.image.glance``'s ``verify_glance_signatures`` (``img_signature*``
properties, the signing certificate from Barbican, optional trusted certificates).

Everything that Nova reads from the Glance record (``disk_format``, ``size``,
``os_hash_algo``/``os_hash_value``, ``checksum``, ``img_signature*``) is read by the engine
from the same record, before any image byte is fetched.
"""

from __future__ import annotations

import itertools
import os
import threading
from typing import Any, Iterable, Mapping, Optional, Union

from . import ProgressCallback, Report, run

__all__ = ["fetch_to_raw", "spec_for"]

_PathLike = Union[str, "os.PathLike[str]"]
_env_ids = itertools.count()
_env_lock = threading.Lock()


def spec_for(glance_endpoint: Optional[str], image_id: str, path: _PathLike, *,
             token_env: Optional[str] = None,
             trusted_certs: Optional[Iterable[_PathLike]] = None,
             cache_dir: Optional[_PathLike] = None,
             cache_mode: Optional[str] = None,
             encryption: Optional[Mapping[str, Any]] = None,
             keystone: Optional[Mapping[str, Any]] = None,
             barbican_endpoint: Optional[str] = None,
             verify_signature: Optional[bool] = None,
             max_size: Optional[int] = None,
             allowed_formats: Optional[Iterable[str]] = None) -> dict[str, Any]:
    """The spec dict ``fetch_to_raw`` runs (secrets only as environment variable names)."""
    glance: dict[str, Any] = {"image_id": image_id}
    if glance_endpoint:
        glance["endpoint"] = glance_endpoint
    if token_env:
        glance["token_env"] = token_env
    if keystone:
        glance["keystone"] = dict(keystone)
    spec: dict[str, Any] = {
        "source": {"glance": glance},
        "convert": {"format": "raw"},
        "sink": {"path": os.fspath(path)},
    }
    if verify_signature is None:
        verify_signature = trusted_certs is not None or barbican_endpoint is not None
    if verify_signature:
        # An empty [verify.signature] takes img_signature* from the record and refuses an
        # unsigned image (Nova's verify_glance_signatures = True).
        sig: dict[str, Any] = {}
        if trusted_certs is not None:
            sig["trusted_certificates"] = [os.fspath(c) for c in trusted_certs]
        if barbican_endpoint:
            sig["barbican"] = {"endpoint": barbican_endpoint}
        spec["verify"] = {"signature": sig}
    inspect: dict[str, Any] = {}
    if max_size is not None:
        inspect["max_virtual_size"] = int(max_size)
    if allowed_formats is not None:
        inspect["allowed_formats"] = list(allowed_formats)
    if inspect:
        spec["inspect"] = inspect
    if cache_dir is not None:
        spec["cache"] = {"dir": os.fspath(cache_dir)}
        if cache_mode:
            spec["cache"]["mode"] = cache_mode
    if encryption is not None:
        spec["encrypt"] = {k: (os.fspath(v) if isinstance(v, os.PathLike) else v)
                           for k, v in encryption.items()}
    return spec


class _SecretEnv:
    """Secrets handed to the engine through process environment variables of unique names
    (the spec names variables, never values), removed again when the call ends."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def put(self, what: str, value: str) -> str:
        name = f"IMGPIPE_PY_{what}_{os.getpid()}_{next(_env_ids)}"
        with _env_lock:
            os.environ[name] = value
        self.names.append(name)
        return name

    def clear(self) -> None:
        with _env_lock:
            for n in self.names:
                os.environ.pop(n, None)
        self.names.clear()


def fetch_to_raw(context_token: Optional[str], glance_endpoint: Optional[str], image_id: str,
                 path: _PathLike, *,
                 trusted_certs: Optional[Iterable[_PathLike]] = None,
                 cache_dir: Optional[_PathLike] = None,
                 encryption: Optional[Mapping[str, Any]] = None,
                 keystone: Optional[Mapping[str, Any]] = None,
                 barbican_endpoint: Optional[str] = None,
                 verify_signature: Optional[bool] = None,
                 max_size: Optional[int] = None,
                 allowed_formats: Optional[Iterable[str]] = None,
                 cache_mode: Optional[str] = None,
                 progress: Optional[ProgressCallback] = None,
                 cancel: Any = None) -> Report:
    """Fetch Glance image ``image_id`` and write it as a raw disk at ``path``, verified.

    - ``context_token``: the request context's auth token (``context.auth_token``), sent to
      Glance and, for the signing certificate, to Barbican. ``None`` with ``keystone``: log in
      with a password instead.
    - ``glance_endpoint``: the image API (``http://glance:9292``); ``None`` with ``keystone``:
      from the catalog.
    - ``trusted_certs``: files or directories of trusted CA certificates (PEM/DER): the signing
      certificate's chain must lead to one (Nova's ``trusted_image_certificates``, exported to
      files). Giving it, or ``barbican_endpoint``, turns signature verification on
      (``verify_signature`` overrides): a signed image's ``img_signature*`` properties are
      checked against the certificate fetched from Barbican, an unsigned image is refused.
    - ``cache_dir``: a verified image cache (``[cache]``); a miss fills it and the disk in one
      pass, a hit is re-verified on its way to the disk.
    - ``encryption``: the ``[encrypt]`` section, e.g. ``{"format": "luks1",
      "passphrase_file": "/run/nova/key"}``.
    - ``keystone``: ``{"auth_url", "username", "password" (or "password_env"),
      "project_name", "user_domain_name", "project_domain_name"}``.
    - ``max_size``: the largest virtual size accepted (the flavor's disk), bytes.

    Returns the ``Report``. Raises ``imgpipe.ImageRejected`` (Nova: ``ImageUnacceptable``,
    ``ImageSignatureVerificationFailed``), ``imgpipe.PipelineError`` (download or I/O errors),
    ``imgpipe.SpecError`` (bad arguments). Whatever fails, nothing is left at ``path``.
    """
    secrets = _SecretEnv()
    try:
        token_env = None
        if context_token is not None:
            token_env = secrets.put("TOKEN", context_token)
        ks = None
        if keystone is not None:
            ks = dict(keystone)
            if "password" in ks:
                ks["password_env"] = secrets.put("PASSWORD", str(ks.pop("password")))
        spec = spec_for(glance_endpoint, image_id, path, token_env=token_env,
                        trusted_certs=trusted_certs, cache_dir=cache_dir, cache_mode=cache_mode,
                        encryption=encryption, keystone=ks, barbican_endpoint=barbican_endpoint,
                        verify_signature=verify_signature, max_size=max_size,
                        allowed_formats=allowed_formats)
        return run(spec, progress=progress, cancel=cancel)
    finally:
        secrets.clear()
