"""Type stubs of the native module (python/src/lib.rs). Use the ``imgpipe`` package instead."""

from typing import Any, Callable, Optional, final

__all__ = ["ProgressInfo", "inspect", "run_spec"]

@final
class ProgressInfo:
    """The counters handed to a ``progress`` callback."""

    @property
    def bytes_read(self) -> int:
        """Image bytes read from the source so far."""
    @property
    def bytes_written(self) -> int:
        """Bytes handed to the sink so far (data and zero runs)."""
    @property
    def total(self) -> Optional[int]:
        """Expected image bytes, when the source knows them."""
    @property
    def stage(self) -> str:
        """``preparing``, ``streaming``, ``finishing``, ``cancelling`` or ``done``."""
    @property
    def elapsed(self) -> float:
        """Seconds since the call started."""

# ("spec", origin, [(path, line, message)]) | ("report", json, exit_status)
# | ("inspection", json, 0) | ("error", message, 1)
_Outcome = tuple[Any, ...]

def run_spec(
    spec: str,
    is_path: bool,
    base: str,
    mode: str,
    input: Optional[str] = None,
    progress: Optional[Callable[[ProgressInfo], Any]] = None,
    cancel: Any = None,
) -> _Outcome: ...
def inspect(
    input: str,
    expect: Optional[str] = None,
    allow: Optional[list[str]] = None,
    max_virtual_size: Optional[str] = None,
    progress: Optional[Callable[[ProgressInfo], Any]] = None,
    cancel: Any = None,
) -> _Outcome: ...
