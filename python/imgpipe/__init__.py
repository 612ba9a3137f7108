"""imgpipe: turn a cloud VM image into an instance disk in one verified pass.

The engine is the Rust library (``crates/imgpipe``); this package calls it in-process.
Inspection, hashing, signature checks, decoding and encryption all happen in one pass over the
bytes, and the sink publishes only when every check passed: a rejected, failed or cancelled run
leaves nothing at the target path.

    import imgpipe
    report = imgpipe.run({
        "source": {"path": "image.qcow2"},
        "verify": {"sha512": "..."},
        "sink": {"path": "disk.raw"},
    })

The GIL is released for the whole run. The calling thread wakes at most every 100 ms to call
``progress(info)``, to poll ``cancel.is_set()`` and to run Python's signal handlers, so
``KeyboardInterrupt`` (and any exception raised by ``progress``) cancels the run; the exception
is raised once the sink was aborted.

Exceptions follow the CLI's exit status: ``SpecError`` (2), ``ImageRejected`` (3),
``PipelineError`` (1) and its subclass ``Cancelled``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable, Mapping, Optional, Union

from . import _imgpipe
from ._imgpipe import ProgressInfo

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


class ImgpipeError(Exception):
    """Base class of every error this package raises."""


class SpecError(ImgpipeError, ValueError):
    """The spec (or an argument) is invalid; nothing was read or written (exit status 2).

    ``problems`` lists every problem at once as ``(key_path, line, message)`` tuples, e.g.
    ``("verify.sha512", 3, "...")``; ``line`` is 0 where the spec has no lines (a dict) or the
    problem concerns the whole document. ``report`` is set when the run itself found the
    problem (e.g. an environment variable named by the spec is unset).
    """

    def __init__(self, origin: str, problems: list[tuple[str, int, str]],
                 report: Optional["Report"] = None) -> None:
        self.origin = origin
        self.problems = [(str(p), int(l), str(m)) for p, l, m in problems]
        self.report = report
        n = len(self.problems)
        lines = [f"invalid spec {origin}: {n} problem{'' if n == 1 else 's'}"]
        for path, line, message in self.problems:
            where = f"line {line}: " if line else ""
            lines.append(f"  {where}{path + ': ' if path else ''}{message}")
        super().__init__("\n".join(lines))


class ImageRejected(ImgpipeError):
    """A check rejected the image (digest, size, format, safety, signature, certificate,
    limit); nothing was published (exit status 3).

    ``check`` names the failed check (``digest.sha512``, ``qcow2.backing_file``, ...),
    ``reason`` says what was wrong, ``phase`` is ``before_streaming`` or ``streaming``,
    ``kind`` the error kind (``digest_mismatch``, ...), ``report`` the run's ``Report`` (an
    ``Inspection`` for ``inspect()``).
    """

    def __init__(self, check: Optional[str], reason: str, phase: Optional[str],
                 kind: Optional[str], report: Any) -> None:
        self.check = check
        self.reason = reason
        self.phase = phase
        self.kind = kind
        self.report = report
        super().__init__(f"image rejected by {check or 'a check'}: {reason}")


class PipelineError(ImgpipeError):
    """The run failed for another reason (I/O, network, unsupported, internal); nothing was
    published (exit status 1). ``report`` is the run's ``Report`` when the run started."""

    def __init__(self, reason: str, kind: Optional[str] = None, phase: Optional[str] = None,
                 report: Optional["Report"] = None) -> None:
        self.reason = reason
        self.kind = kind
        self.phase = phase
        self.report = report
        super().__init__(reason)


class Cancelled(PipelineError):
    """The run was cancelled through ``cancel``; the sink was aborted, nothing published.
    (A ``KeyboardInterrupt`` that cancelled a run is re-raised as itself.)"""


class _Record:
    """Attributes over the engine's JSON object; ``to_dict()`` gives the object back."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = dict(data)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(name) from None

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self._data == other._data  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        """The fields as ``imgpipe ... --json`` prints them (a deep copy)."""
        return json.loads(json.dumps(self._data))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._data!r})"


class StageReport(_Record):
    """Per-stage telemetry of a run: ``name``, ``bytes``, ``busy_seconds``, ``mb_per_s``,
    ``busy_fraction``."""

    __slots__ = ()


class Report(_Record):
    """What ``imgpipe run --json`` prints: ``status`` (ok, rejected, error), ``reason``,
    ``check``, ``kind``, ``phase``, ``source``, ``bytes_read``, ``bytes_written``, ``hashes``
    (algorithm -> lowercase hex), ``format``, ``virtual_size``, ``sink``,
    ``zero_bytes_skipped``, ``seconds``, ``passed``, ``warnings``, ``resumes``, ``stages``
    (``StageReport`` objects; plain dicts in ``to_dict()``), ``limiting_stage``."""

    __slots__ = ()

    @property
    def ok(self) -> bool:
        """Every check passed and the result (if any sink) was published."""
        return self._data.get("status") == "ok"

    @property
    def stages(self) -> list[StageReport]:
        return [StageReport(s) for s in self._data.get("stages", [])]


class Inspection(_Record):
    """What ``imgpipe inspect --json`` prints: ``format``, ``subformat``, ``virtual_size``,
    ``safe``, ``violations`` (list of ``{"check", "message"}``), ``bytes_examined``,
    ``partition_table``."""

    __slots__ = ()


SpecArg = Union[Mapping[str, Any], str, bytes, "os.PathLike[str]"]
ProgressCallback = Callable[[ProgressInfo], Any]


def _spec_arg(spec: SpecArg) -> tuple[str, bool]:
    """(text or path, is_path) for the engine; a dict goes through JSON."""
    if isinstance(spec, Mapping):
        try:
            return json.dumps(spec, default=_json_default), False
        except (TypeError, ValueError) as e:
            raise SpecError("<dict>", [("", 0, f"the spec dict is not JSON data: {e}")]) from None
    if isinstance(spec, os.PathLike):
        return os.fspath(spec), True
    if isinstance(spec, bytes):
        return os.fsdecode(spec), True
    if isinstance(spec, str):
        # TOML or JSON text has a newline, a '{' or a key assignment; anything else is a path.
        s = spec.lstrip()
        if "\n" in spec or s.startswith("{") or ("=" in spec and not os.path.exists(spec)):
            return spec, False
        return spec, True
    raise TypeError(
        f"spec must be a dict, TOML/JSON text or a path, not {type(spec).__name__}"
    )


def _json_default(v: Any) -> Any:
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if isinstance(v, (set, frozenset, tuple)):
        return list(v)
    raise TypeError(f"{type(v).__name__} is not JSON data")


def _outcome(out: tuple[Any, ...], from_dict: bool = False) -> Any:
    """Map the native module's answer onto a result or an exception."""
    tag = out[0]
    if tag == "spec":
        _, origin, problems = out
        if from_dict:
            # The dict went through one line of JSON: its line numbers mean nothing.
            origin, problems = "<dict>", [(p, 0, m) for p, _, m in problems]
        raise SpecError(origin, problems)
    if tag == "error":
        raise PipelineError(out[1])
    if tag == "inspection":
        ins = Inspection(json.loads(out[1]))
        if not ins.safe:
            first = ins.violations[0] if ins.violations else {}
            reason = "; ".join(f"{v['check']}: {v['message']}" for v in ins.violations)
            raise ImageRejected(first.get("check"), reason or "unsafe image", "streaming",
                                "unsafe_image", ins)
        return ins
    _, text, code = out
    report = Report(json.loads(text))
    if code == 0:
        return report
    reason = report.reason or "failed"
    if code == 3:
        raise ImageRejected(report.check, reason, report.phase, report.kind, report)
    if code == 2:
        raise SpecError(report.source, [(report.check or "", 0, reason)], report)
    if report.kind == "cancelled":
        raise Cancelled(reason, report.kind, report.phase, report)
    raise PipelineError(reason, report.kind, report.phase, report)


def _check_hooks(progress: Any, cancel: Any) -> None:
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable, not {type(progress).__name__}")
    if cancel is not None and not callable(getattr(cancel, "is_set", None)):
        raise TypeError(
            f"cancel must have is_set() (a threading.Event), not {type(cancel).__name__}"
        )


def run(spec: SpecArg, *, progress: Optional[ProgressCallback] = None,
        cancel: Any = None) -> Report:
    """Run a spec: read the source once, check it, write the sink; return the ``Report``.

    ``spec`` is a dict (the spec's JSON schema, docs/spec-reference.md), TOML/JSON text, or
    the path of a spec file (``str`` without newline, ``pathlib.Path``). Relative paths inside
    a dict or text are resolved against the current directory, inside a file against the
    file's directory (as the CLI does).

    ``progress(info)`` is called from this thread about every 100 ms and once at the end, with
    a ``ProgressInfo`` (``bytes_read``, ``bytes_written``, ``total``, ``stage``,
    ``elapsed``). ``cancel`` is anything with ``is_set()`` (a ``threading.Event``): once set,
    the run stops and ``Cancelled`` is raised. Raises ``SpecError``, ``ImageRejected``,
    ``PipelineError``; in every failing case nothing was published.
    """
    _check_hooks(progress, cancel)
    text, is_path = _spec_arg(spec)
    out = _imgpipe.run_spec(text, is_path, os.getcwd(), "run", None, progress, cancel)
    return _outcome(out, isinstance(spec, Mapping))


def verify(spec: SpecArg, *, input: Optional[Union[str, "os.PathLike[str]"]] = None,
           progress: Optional[ProgressCallback] = None, cancel: Any = None) -> Report:
    """Run only the checks of a spec (inspect, digests, size, signature): its ``sink``,
    ``encrypt`` and ``cache`` sections are dropped and nothing is written. ``input`` (a path,
    an http(s) URL or ``-``) replaces the spec's source. Same errors as ``run``."""
    _check_hooks(progress, cancel)
    text, is_path = _spec_arg(spec)
    inp = None if input is None else os.fspath(input)
    out = _imgpipe.run_spec(text, is_path, os.getcwd(), "verify", inp, progress, cancel)
    return _outcome(out, isinstance(spec, Mapping))


def inspect(path_or_url: Union[str, "os.PathLike[str]"], *, expect: Optional[str] = None,
            allow: Optional[Iterable[str]] = None,
            max_virtual_size: Optional[Union[int, str]] = None,
            progress: Optional[ProgressCallback] = None, cancel: Any = None) -> Inspection:
    """Detect an image's format and check it is safe, writing nothing (``imgpipe inspect``).

    ``expect`` is the declared format (it must match), ``allow`` the formats accepted at all,
    ``max_virtual_size`` a byte count or a size string (``"64TiB"``). Returns the
    ``Inspection``; raises ``ImageRejected`` (its ``report`` is the ``Inspection``) when the
    image is unsafe or not what was declared, ``SpecError`` for a bad argument,
    ``PipelineError`` when the bytes cannot be read.
    """
    _check_hooks(progress, cancel)
    allow_list = None if allow is None else [str(f) for f in allow]
    if isinstance(allow, str):
        allow_list = [f.strip() for f in allow.split(",")]
    mvs = None if max_virtual_size is None else str(max_virtual_size)
    return _outcome(_imgpipe.inspect(os.fspath(path_or_url), expect, allow_list, mvs,
                                     progress, cancel))
from . import openstack  # noqa: E402  (imgpipe.openstack.fetch_to_raw)
