"""imgpipe.run / verify / inspect through the installed extension, against qemu-img and
coreutils."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import imgpipe
from conftest import MIB, files_equal, qemu_img, sha512sum


def test_qcow2_becomes_the_raw_disk_qemu_img_makes(dirs, qcow2_image):
    images, sink = dirs
    img, expected = qcow2_image
    digest = sha512sum(img)
    out = sink / "disk.raw"
    seen: list[imgpipe.ProgressInfo] = []
    report = imgpipe.run({
        "source": {"path": str(img)},
        "inspect": {"disk_format": "qcow2"},
        "verify": {"sha512": digest, "size": img.stat().st_size},
        "sink": {"path": str(out)},
    }, progress=seen.append)
    assert isinstance(report, imgpipe.Report)
    # However short the run, the last call reports the finished counters.
    last = seen[-1]
    assert last.stage == "done" and last.total == img.stat().st_size
    assert last.bytes_read == img.stat().st_size and last.bytes_written == 24 * MIB
    assert report.ok and report.status == "ok"
    assert files_equal(out, expected), "imgpipe's raw disk differs from qemu-img convert -O raw"
    assert out.stat().st_size == expected.stat().st_size
    assert report.format == "qcow2"
    assert report.virtual_size == 24 * MIB
    assert report.hashes["sha512"] == digest
    assert "digest.sha512" in report.passed
    assert report.bytes_read == img.stat().st_size
    assert report.sink == str(out)
    # The same fields as `imgpipe run --json`, as plain data.
    d = report.to_dict()
    assert json.loads(json.dumps(d)) == d
    for key in ("status", "reason", "check", "hashes", "format", "virtual_size", "bytes_read",
                "bytes_written", "seconds", "stages", "passed", "warnings"):
        assert key in d, key
    assert all(isinstance(s, imgpipe.StageReport) for s in report.stages)
    assert sorted(os.listdir(sink)) == ["disk.raw"]


def test_same_report_fields_as_the_cli_json(dirs, qcow2_image):
    """The report is the CLI's --json object: same keys, same values apart from timings."""
    import shutil

    images, sink = dirs
    img, _ = qcow2_image
    cli = shutil.which("imgpipe") or os.environ.get("IMGPIPE_BIN")
    if not cli:
        pytest.skip("no imgpipe binary on PATH or in IMGPIPE_BIN")
    spec = images / "spec.toml"
    spec.write_text(f'[source]\npath = "{img}"\n[verify]\nsha512 = "{sha512sum(img)}"\n')
    out = subprocess.run([cli, "run", "--json", "--progress", "never", str(spec)],
                         capture_output=True, text=True, check=True)
    want = json.loads(out.stdout)
    got = imgpipe.run(spec).to_dict()
    assert set(got) == set(want)
    for k in ("status", "hashes", "format", "virtual_size", "bytes_read", "passed", "source"):
        assert got[k] == want[k], k


def tamper(img: Path) -> None:
    data = img.read_bytes()
    at = data.find(b"IMGPIPE-TAMPER-MARKER")
    assert at > 0, "marker not found in the qcow2's data clusters"
    with open(img, "r+b") as f:
        f.seek(at + 3)
        f.write(b"X")


def test_tampered_image_is_rejected_and_nothing_is_left(dirs, qcow2_image):
    images, sink = dirs
    img, _ = qcow2_image
    digest = sha512sum(img)
    tamper(img)
    assert sha512sum(img) != digest
    with pytest.raises(imgpipe.ImageRejected) as ei:
        imgpipe.run({
            "source": {"path": str(img)},
            "verify": {"sha512": digest},
            "sink": {"path": str(sink / "disk.raw")},
        })
    e = ei.value
    assert e.check == "digest.sha512"
    assert e.kind == "digest_mismatch"
    assert e.phase == "streaming"
    assert digest[:16] in e.reason or "sha512" in e.reason
    assert isinstance(e.report, imgpipe.Report)
    assert e.report.status == "rejected" and e.report.check == "digest.sha512"
    # No disk, no NAME.part, no temporary file of any name.
    assert os.listdir(sink) == []


def test_invalid_spec_dict_lists_every_problem(dirs):
    _, sink = dirs
    with pytest.raises(imgpipe.SpecError) as ei:
        imgpipe.run({
            "source": {"path": "a.raw", "url": "http://127.0.0.1:1/a"},
            "verify": {"sha512": "ab", "bogus": 1},
            "encrypt": {"format": "rot13"},
            "sink": {"path": 3},
        })
    e = ei.value
    assert isinstance(e, ValueError)
    paths = [p for p, _, _ in e.problems]
    for want in ("source", "verify.sha512", "verify.bogus", "encrypt.format", "sink.path"):
        assert want in paths, (want, e.problems)
    msgs = dict((p, m) for p, _, m in e.problems)
    assert "128 hex digits" in msgs["verify.sha512"] and '"ab"' in msgs["verify.sha512"]
    assert "bogus" in msgs["verify.bogus"]
    assert all(line == 0 for _, line, _ in e.problems)
    assert "verify.sha512" in str(e)
    assert os.listdir(sink) == []


def test_bad_hooks_are_refused_before_the_run(dirs, qcow2_image):
    _, sink = dirs
    img, _ = qcow2_image
    spec = {"source": {"path": str(img)}, "sink": {"path": str(sink / "disk.raw")}}
    with pytest.raises(TypeError, match="is_set"):
        imgpipe.run(spec, cancel=object())
    with pytest.raises(TypeError, match="callable"):
        imgpipe.run(spec, progress=42)
    assert os.listdir(sink) == []


def test_spec_text_and_file_resolve_relative_paths_like_the_cli(dirs, qcow2_image, monkeypatch):
    images, sink = dirs
    img, expected = qcow2_image
    # A spec file: relative paths are resolved against the file's directory.
    spec = images / "spec.toml"
    spec.write_text('[source]\npath = "image.qcow2"\n[sink]\npath = "../sink/a.raw"\n')
    monkeypatch.chdir("/")
    assert imgpipe.run(spec).ok
    assert files_equal(sink / "a.raw", expected)
    # TOML text: against the current directory. A path given as str works too.
    monkeypatch.chdir(images)
    assert imgpipe.run('[source]\npath = "image.qcow2"\n[sink]\npath = "../sink/b.raw"\n').ok
    assert files_equal(sink / "b.raw", expected)
    assert imgpipe.run(str(spec.name)).ok  # rewrites a.raw
    # JSON text with a TOML syntax problem reported with its line.
    with pytest.raises(imgpipe.SpecError) as ei:
        imgpipe.run('[source]\npath = "image.qcow2"\n[verify]\nsha256 = "zz"\n')
    assert ei.value.problems[0][:2] == ("verify.sha256", 4)


def test_verify_writes_nothing(dirs, qcow2_image):
    images, sink = dirs
    img, _ = qcow2_image
    digest = sha512sum(img)
    r = imgpipe.verify({"source": {"path": "/nonexistent"}, "verify": {"sha512": digest},
                        "sink": {"path": str(sink / "disk.raw")}}, input=img)
    assert r.ok and r.sink is None and r.hashes["sha512"] == digest
    assert os.listdir(sink) == []
    tamper(img)
    with pytest.raises(imgpipe.ImageRejected) as ei:
        imgpipe.verify({"source": {"path": str(img)}, "verify": {"sha512": digest}})
    assert ei.value.check == "digest.sha512"


def test_inspect_reports_and_rejects(dirs, qcow2_image):
    images, _ = dirs
    img, _ = qcow2_image
    ins = imgpipe.inspect(img, expect="qcow2", allow=["qcow2", "raw"])
    assert ins.safe and ins.format == "qcow2" and ins.virtual_size == 24 * MIB
    with pytest.raises(imgpipe.ImageRejected) as ei:
        imgpipe.inspect(img, expect="vmdk")
    assert ei.value.report.format == "qcow2"
    # A backing file is refused (what Nova's format_inspector safety check guards against).
    child = images / "child.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", str(img), "-F", "qcow2", str(child))
    with pytest.raises(imgpipe.ImageRejected) as ei:
        imgpipe.inspect(child)
    assert ei.value.check == "qcow2.backing_file", ei.value.report
    with pytest.raises(imgpipe.ImageRejected) as ei:
        imgpipe.inspect(img, max_virtual_size="1MiB")
    assert ei.value.report.safe is False
    with pytest.raises(imgpipe.SpecError) as ei:
        imgpipe.inspect(img, expect="floppy")
    assert ei.value.problems[0][0] == "expect"
    with pytest.raises(imgpipe.PipelineError) as ei:
        imgpipe.inspect(images / "missing.qcow2")
    assert "missing.qcow2" in str(ei.value)


def test_io_failure_is_a_pipeline_error_with_its_report(dirs):
    _, sink = dirs
    with pytest.raises(imgpipe.PipelineError) as ei:
        imgpipe.run({"source": {"path": str(sink.parent / "no-such-image.qcow2")},
                     "sink": {"path": str(sink / "disk.raw")}})
    e = ei.value
    assert not isinstance(e, imgpipe.Cancelled)
    assert e.kind == "io" and e.phase == "before_streaming", e.report
    assert "no-such-image.qcow2" in e.reason
    assert e.report.status == "error" and e.report.bytes_read == 0
    assert os.listdir(sink) == []


def test_a_spec_problem_found_by_the_run_is_a_spec_error(dirs, monkeypatch):
    """Exit status 2 from the run itself (an environment variable the spec names is unset)."""
    _, sink = dirs
    monkeypatch.delenv("IMGPIPE_PY_TEST_UNSET", raising=False)
    with pytest.raises(imgpipe.SpecError) as ei:
        imgpipe.run({"source": {"glance": {"endpoint": "http://127.0.0.1:9",
                                           "image_id": "x",
                                           "token_env": "IMGPIPE_PY_TEST_UNSET"}},
                     "sink": {"path": str(sink / "disk.raw")}})
    e = ei.value
    assert e.report is not None and e.report.kind == "spec"
    assert "IMGPIPE_PY_TEST_UNSET" in str(e)
    assert os.listdir(sink) == []


def test_two_runs_in_two_threads_at_once(dirs, qcow2_image):
    """Each call has its own engine thread and runtime: concurrent calls neither share state
    nor wait for each other's GIL."""
    import threading

    _, sink = dirs
    img, expected = qcow2_image
    results: dict[int, object] = {}

    def one(i: int) -> None:
        try:
            results[i] = imgpipe.run({"source": {"path": str(img)},
                                      "sink": {"path": str(sink / f"disk{i}.raw")}})
        except BaseException as e:  # noqa: BLE001 - reported below
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i in range(3):
        r = results[i]
        assert isinstance(r, imgpipe.Report) and r.ok, r
        assert files_equal(sink / f"disk{i}.raw", expected)
