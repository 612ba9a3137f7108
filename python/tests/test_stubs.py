"""The .pyi stubs describe the installed package: mypy's stubtest compares them with the
runtime objects (names, signatures, attributes), and a strict mypy run type-checks a driver-like
use of the API against them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def mypy_available() -> bool:
    try:
        import mypy  # noqa: F401
    except ImportError:
        if os.environ.get("IMGPIPE_REQUIRE_ORACLES") == "1":
            pytest.fail("mypy is not installed (IMGPIPE_REQUIRE_ORACLES=1)")
        pytest.skip("mypy is not installed")
    return True


@pytest.mark.parametrize("module", ["imgpipe", "imgpipe._imgpipe", "imgpipe.openstack"])
def test_stubs_match_the_runtime(module, tmp_path):
    mypy_available()
    r = subprocess.run([sys.executable, "-m", "mypy.stubtest", module], cwd=tmp_path,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_typed_driver_checks_strictly(tmp_path: Path):
    mypy_available()
    use = tmp_path / "driver.py"
    use.write_text(textwrap.dedent("""
        import threading
        import imgpipe
        from imgpipe.openstack import fetch_to_raw

        def show(p: imgpipe.ProgressInfo) -> None:
            print(p.bytes_read + p.bytes_written, p.total, p.stage, p.elapsed)

        def main() -> None:
            r = imgpipe.run({"source": {"path": "x"}}, progress=show, cancel=threading.Event())
            digests: dict[str, str] = r.hashes
            stages: list[imgpipe.StageReport] = r.stages
            ins: imgpipe.Inspection = imgpipe.inspect("x", expect="qcow2", allow=["raw"])
            print(digests, stages, ins.safe, imgpipe.verify("spec.toml", input="img").ok)
            try:
                fetch_to_raw("t", "http://g", "id", "/d", trusted_certs=["/ca.pem"])
            except imgpipe.ImageRejected as e:
                check: str | None = e.check
                print(check)
            except imgpipe.SpecError as e:
                problems: list[tuple[str, int, str]] = e.problems
                print(problems)
    """))
    r = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(use)],
                       cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    bad = tmp_path / "bad.py"
    bad.write_text("import imgpipe\nx: int = imgpipe.run({}).hashes\n")
    r = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(bad)],
                       cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 1 and "dict[str, str]" in r.stdout, r.stdout
