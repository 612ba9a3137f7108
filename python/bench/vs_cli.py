"""imgpipe.run from Python vs the `imgpipe` CLI on the same image, alternating, in one process.

    python python/bench/vs_cli.py --cli target/release/imgpipe [--mib 1024] [--rounds 9] [--dir D]

Makes a qcow2 of random data with qemu-img (the CLI's job: qcow2 -> raw with a sha512 check),
runs both `rounds` times (the first round is a warm-up), prints the medians and the ratio.
Build both in release: `cargo build --release -p imgpipe-cli` and `pip install ./python`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import imgpipe


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--dir")
    a = ap.parse_args()
    d = Path(a.dir or tempfile.mkdtemp(prefix="imgpipe-bench-"))
    d.mkdir(parents=True, exist_ok=True)
    src, img = d / "src.raw", d / "img.qcow2"
    with open(src, "wb") as f:
        for _ in range(a.mib):
            f.write(os.urandom(1 << 20))
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(src), str(img)],
                   check=True)
    src.unlink()
    h = hashlib.sha512()
    with open(img, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    spec = d / "spec.toml"
    spec.write_text(f'[source]\npath = "img.qcow2"\n[verify]\nsha512 = "{h.hexdigest()}"\n'
                    '[sink]\npath = "out.raw"\n')
    times: dict[str, list[float]] = {"cli": [], "python": []}
    for _ in range(a.rounds):
        for kind in times:
            (d / "out.raw").unlink(missing_ok=True)
            t = time.monotonic()
            if kind == "cli":
                subprocess.run([a.cli, "run", "--progress", "never", str(spec)], check=True,
                               capture_output=True)
            else:
                imgpipe.run(spec, progress=lambda p: None)
            times[kind].append(time.monotonic() - t)
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:7} median {med[k]:.3f} s  min {min(v[1:]):.3f} s  "
              f"({' '.join(f'{x:.3f}' for x in v)})")
    print(f"python / cli (medians): {med['python'] / med['cli']:.3f}")


if __name__ == "__main__":
    main()
