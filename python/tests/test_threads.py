"""Progress, cancel, KeyboardInterrupt and the released GIL.

Runs that must last long enough to be observed read their image from a FIFO fed by a paced
writer thread (the file source reads FIFOs like pipes), so the tests do not depend on how fast
the machine hashes.
"""

from __future__ import annotations

import _thread
import errno
import os
import threading
import time
from pathlib import Path

import pytest

import imgpipe
from conftest import MIB, files_equal, patterned_raw, sha512sum

SIZE = 256 * MIB


class PacedFifo:
    """A FIFO at `path` fed with the bytes of `image`, `chunk` bytes every `pause` seconds.
    `gate`: when set, the writer stops after `gate_after` bytes until `gate` is set."""

    def __init__(self, path: Path, image: Path, chunk: int = 4 * MIB, pause: float = 0.015,
                 gate: threading.Event | None = None, gate_after: int = 0) -> None:
        os.mkfifo(path)
        self.path, self.image, self.chunk, self.pause = path, image, chunk, pause
        self.gate, self.gate_after = gate, gate_after
        self.stop = threading.Event()
        self.written = 0
        self.broken = False
        self.thread = threading.Thread(target=self._feed, daemon=True)
        self.thread.start()

    def _open(self) -> int | None:
        while not self.stop.is_set():
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as e:
                if e.errno != errno.ENXIO:  # no reader yet
                    raise
                time.sleep(0.005)
                continue
            os.set_blocking(fd, True)
            return fd
        return None

    def _feed(self) -> None:
        fd = self._open()
        if fd is None:
            return
        try:
            with open(self.image, "rb") as f:
                while not self.stop.is_set():
                    if self.gate is not None and self.written >= self.gate_after:
                        self.gate.wait(30)
                    block = f.read(self.chunk)
                    if not block:
                        break
                    os.write(fd, block)
                    self.written += len(block)
                    time.sleep(self.pause)
        except BrokenPipeError:
            self.broken = True
        finally:
            os.close(fd)

    def close(self) -> None:
        self.stop.set()
        if self.gate is not None:
            self.gate.set()
        self.thread.join(30)


@pytest.fixture
def big_raw(dirs) -> Path:
    images, _ = dirs
    return patterned_raw(images / "big.raw", SIZE, seed=7)


def test_progress_is_called_at_least_5_times_on_256_mib(dirs, big_raw):
    images, sink = dirs
    digest = sha512sum(big_raw)
    fifo = PacedFifo(images / "fifo", big_raw)
    calls: list[imgpipe.ProgressInfo] = []
    try:
        report = imgpipe.run({
            "source": {"path": str(fifo.path)},
            "inspect": {"disk_format": "raw"},
            "verify": {"sha512": digest, "size": SIZE},
            "sink": {"path": str(sink / "disk.raw")},
        }, progress=calls.append)
    finally:
        fifo.close()
    assert report.ok and report.bytes_read == SIZE
    assert files_equal(sink / "disk.raw", big_raw)
    assert len(calls) >= 5, calls
    assert all(isinstance(c, imgpipe.ProgressInfo) for c in calls)
    reads = [c.bytes_read for c in calls]
    assert reads == sorted(reads), "bytes_read went backwards"
    assert any(0 < c.bytes_read < SIZE and c.stage == "streaming" for c in calls), calls
    assert any(c.bytes_written > 0 for c in calls[:-1]), "no write seen while streaming"
    last = calls[-1]
    assert last.stage == "done" and last.bytes_read == SIZE and last.bytes_written == SIZE
    # At most every 100 ms (the final call comes when the run ends).
    gaps = [b.elapsed - a.elapsed for a, b in zip(calls[:-2], calls[1:-1])]
    assert min(gaps) >= 0.09, gaps


def wait_for(pred, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.005)
    return False


def start_canceller(seen: list[imgpipe.ProgressInfo], action) -> threading.Thread:
    """Another thread that acts once progress shows bytes reached the sink."""

    def watch() -> None:
        if wait_for(lambda: any(c.bytes_written > 0 for c in seen)):
            action()

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def test_cancel_event_mid_run_raises_and_publishes_nothing(dirs, big_raw):
    images, sink = dirs
    cancel = threading.Event()
    # The writer holds back after 32 MiB until the cancel is set: the run is mid-stream.
    fifo = PacedFifo(images / "fifo", big_raw, gate=cancel, gate_after=32 * MIB)
    seen: list[imgpipe.ProgressInfo] = []
    canceller = start_canceller(seen, cancel.set)
    try:
        with pytest.raises(imgpipe.Cancelled) as ei:
            imgpipe.run({
                "source": {"path": str(fifo.path)},
                "sink": {"path": str(sink / "disk.raw")},
            }, progress=seen.append, cancel=cancel)
    finally:
        fifo.close()
        canceller.join(5)
    assert cancel.is_set()
    e = ei.value
    assert isinstance(e, imgpipe.PipelineError)
    assert e.kind == "cancelled" and e.report.status == "error"
    assert 0 < e.report.bytes_read < SIZE
    # The sink had begun (bytes were written) and was aborted: no disk, no temp file.
    assert os.listdir(sink) == []


def test_keyboard_interrupt_cancels_and_is_reraised(dirs, big_raw):
    images, sink = dirs
    release = threading.Event()
    fifo = PacedFifo(images / "fifo", big_raw, gate=release, gate_after=32 * MIB)
    seen: list[imgpipe.ProgressInfo] = []

    def ctrl_c() -> None:
        _thread.interrupt_main()  # as if Ctrl-C was pressed
        release.set()

    canceller = start_canceller(seen, ctrl_c)
    try:
        with pytest.raises(KeyboardInterrupt):
            imgpipe.run({
                "source": {"path": str(fifo.path)},
                "sink": {"path": str(sink / "disk.raw")},
            }, progress=seen.append)
    finally:
        release.set()
        fifo.close()
        canceller.join(5)
    assert any(c.bytes_written > 0 for c in seen)
    assert os.listdir(sink) == []


def test_exception_in_progress_cancels_and_propagates(dirs, big_raw):
    images, sink = dirs
    release = threading.Event()
    fifo = PacedFifo(images / "fifo", big_raw, gate=release, gate_after=32 * MIB)

    class Stop(Exception):
        pass

    def progress(info: imgpipe.ProgressInfo) -> None:
        if info.bytes_written > 0:
            release.set()
            raise Stop(info.bytes_written)

    try:
        with pytest.raises(Stop):
            imgpipe.run({"source": {"path": str(fifo.path)},
                         "sink": {"path": str(sink / "disk.raw")}}, progress=progress)
    finally:
        release.set()
        fifo.close()
    assert os.listdir(sink) == []


def test_other_python_threads_run_while_a_run_streams(dirs, big_raw):
    """The GIL is released for the whole run: a counting thread advances at about the rate it
    has while this thread sleeps. (Holding the GIL would leave it at zero.)"""
    _, sink = dirs
    count = [0]
    stop = threading.Event()

    def counter() -> None:
        while not stop.is_set():
            count[0] += 1

    t = threading.Thread(target=counter, daemon=True)
    t.start()
    try:
        c0 = count[0]
        time.sleep(0.3)
        rate = (count[0] - c0) / 0.3  # increments per second with the GIL free
        c1, t1 = count[0], time.monotonic()
        report = imgpipe.run({
            "source": {"path": str(big_raw)},
            "verify": {"report": ["sha512", "sha256", "md5"]},
            "sink": {"path": str(sink / "disk.raw")},
        })
        c2, t2 = count[0], time.monotonic()
    finally:
        stop.set()
        t.join(5)
    assert report.ok and report.bytes_read == SIZE
    during = (c2 - c1) / (t2 - t1)
    assert t2 - t1 > 0.05
    assert during > 0.25 * rate, (during, rate)
