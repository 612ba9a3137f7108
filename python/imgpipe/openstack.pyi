"""Type stubs of ``imgpipe.openstack``."""

import os
from typing import Any, Iterable, Mapping, Optional, Union

from . import ProgressCallback, Report, _Event

__all__ = ["fetch_to_raw", "spec_for"]

_PathLike = Union[str, os.PathLike[str]]

def spec_for(
    glance_endpoint: Optional[str],
    image_id: str,
    path: _PathLike,
    *,
    token_env: Optional[str] = None,
    trusted_certs: Optional[Iterable[_PathLike]] = None,
    cache_dir: Optional[_PathLike] = None,
    cache_mode: Optional[str] = None,
    encryption: Optional[Mapping[str, Any]] = None,
    keystone: Optional[Mapping[str, Any]] = None,
    barbican_endpoint: Optional[str] = None,
    verify_signature: Optional[bool] = None,
    max_size: Optional[int] = None,
    allowed_formats: Optional[Iterable[str]] = None,
) -> dict[str, Any]: ...
def fetch_to_raw(
    context_token: Optional[str],
    glance_endpoint: Optional[str],
    image_id: str,
    path: _PathLike,
    *,
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
    cancel: Optional[_Event] = None,
) -> Report: ...
