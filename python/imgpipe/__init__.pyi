"""Type stubs of the ``imgpipe`` package (python/imgpipe/__init__.py)."""

import os
from typing import Any, Callable, Iterable, Mapping, Optional, Protocol, Union

from . import openstack as openstack
from ._imgpipe import ProgressInfo as ProgressInfo

__all__ = [
    "Cancelled",
    "ImageRejected",
    "ImgpipeError",
    "Inspection",
    "PipelineError",
    "ProgressInfo",
    "Report",
    "SpecError",
    "StageReport",
    "inspect",
    "run",
    "verify",
]

class _Event(Protocol):
    def is_set(self) -> bool: ...

SpecArg = Union[Mapping[str, Any], str, bytes, os.PathLike[str]]
ProgressCallback = Callable[[ProgressInfo], Any]

class ImgpipeError(Exception): ...

class SpecError(ImgpipeError, ValueError):
    origin: str
    problems: list[tuple[str, int, str]]
    report: Optional[Report]
    def __init__(
        self, origin: str, problems: list[tuple[str, int, str]], report: Optional[Report] = ...
    ) -> None: ...

class ImageRejected(ImgpipeError):
    check: Optional[str]
    reason: str
    phase: Optional[str]
    kind: Optional[str]
    report: Union[Report, Inspection]
    def __init__(
        self,
        check: Optional[str],
        reason: str,
        phase: Optional[str],
        kind: Optional[str],
        report: Union[Report, Inspection],
    ) -> None: ...

class PipelineError(ImgpipeError):
    reason: str
    kind: Optional[str]
    phase: Optional[str]
    report: Optional[Report]
    def __init__(
        self,
        reason: str,
        kind: Optional[str] = ...,
        phase: Optional[str] = ...,
        report: Optional[Report] = ...,
    ) -> None: ...

class Cancelled(PipelineError): ...

class StageReport:
    name: str
    bytes: int
    busy_seconds: float
    mb_per_s: float
    busy_fraction: float
    def to_dict(self) -> dict[str, Any]: ...

class Report:
    status: str
    reason: Optional[str]
    check: Optional[str]
    kind: Optional[str]
    phase: Optional[str]
    source: str
    bytes_read: int
    bytes_written: int
    hashes: dict[str, str]
    format: Optional[str]
    virtual_size: Optional[int]
    sink: Optional[str]
    zero_bytes_skipped: int
    seconds: float
    passed: list[str]
    warnings: list[str]
    resumes: int
    limiting_stage: Optional[str]
    @property
    def ok(self) -> bool: ...
    @property
    def stages(self) -> list[StageReport]: ...
    def to_dict(self) -> dict[str, Any]: ...

class Inspection:
    format: str
    subformat: Optional[str]
    virtual_size: Optional[int]
    safe: bool
    violations: list[dict[str, str]]
    bytes_examined: int
    partition_table: Optional[str]
    def to_dict(self) -> dict[str, Any]: ...

def run(
    spec: SpecArg,
    *,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[_Event] = None,
) -> Report: ...
def verify(
    spec: SpecArg,
    *,
    input: Optional[Union[str, os.PathLike[str]]] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[_Event] = None,
) -> Report: ...
def inspect(
    path_or_url: Union[str, os.PathLike[str]],
    *,
    expect: Optional[str] = None,
    allow: Optional[Iterable[str]] = None,
    max_virtual_size: Optional[Union[int, str]] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[_Event] = None,
) -> Inspection: ...
