"""Shared helpers: images made with qemu-img at test time, digests from coreutils."""

from __future__ import annotations

import faulthandler
import os
import shutil
import subprocess
from pathlib import Path

import pytest

MIB = 1 << 20


def require_tool(name: str) -> str:
    """The tool's path; missing -> skip, or fail under IMGPIPE_REQUIRE_ORACLES=1 (CI)."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name} is not installed"
        if os.environ.get("IMGPIPE_REQUIRE_ORACLES") == "1":
            pytest.fail(msg + " (IMGPIPE_REQUIRE_ORACLES=1)")
        pytest.skip(msg)
    return path


def sha512sum(path: Path) -> str:
    """The digest as coreutils computes it (not imgpipe's own hasher)."""
    out = subprocess.run([require_tool("sha512sum"), str(path)], check=True,
                         capture_output=True, text=True).stdout
    return out.split()[0]


def qemu_img(*args: str) -> None:
    subprocess.run([require_tool("qemu-img"), *args], check=True, capture_output=True)


def patterned_raw(path: Path, size: int, seed: int = 1) -> Path:
    """A sparse raw disk of `size` bytes with pseudo-random data in a few places: holes for
    the decoders' zero handling, data that a wrong offset cannot reproduce."""
    rnd = __import__("random").Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for off in (0, size // 3, size // 2 + 65536 + 512, size - 3 * 65536):
            f.seek(off)
            f.write(rnd.randbytes(96 * 1024))
        # A marker the tamper test can find inside the qcow2's data clusters.
        f.seek(size // 4)
        f.write(b"IMGPIPE-TAMPER-MARKER-0123456789" * 64)
    return path


@pytest.fixture(autouse=True)
def deadline():
    """A hung test (e.g. a run that keeps the GIL while a feeding thread waits for it) ends
    the session with every thread's traceback instead of hanging the test command."""
    faulthandler.dump_traceback_later(300, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """(image dir, sink dir): the sink dir must hold nothing after a failed run."""
    images, sink = tmp_path / "images", tmp_path / "sink"
    images.mkdir()
    sink.mkdir()
    return images, sink


@pytest.fixture
def qcow2_image(dirs: tuple[Path, Path]) -> tuple[Path, Path]:
    """(qcow2 image, the raw disk `qemu-img convert -O raw` makes of it)."""
    images, _ = dirs
    src = patterned_raw(images / "src.raw", 24 * MIB)
    img = images / "image.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(src), str(img))
    expected = images / "expected.raw"
    qemu_img("convert", "-f", "qcow2", "-O", "raw", str(img), str(expected))
    src.unlink()
    return img, expected


def files_equal(a: Path, b: Path) -> bool:
    """Byte-for-byte comparison by cmp(1) (a sparse file and a written one compare equal)."""
    r = subprocess.run(["cmp", "-s", str(a), str(b)])
    return r.returncode == 0
