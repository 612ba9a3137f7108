#!/usr/bin/env python3
"""Write a sparse raw benchmark image: random data with holes (stdlib + the openssl CLI).

    benches/mkimage.py OUT SIZE_MIB [DATA_PERCENT=75] [SEED=imgpipe]

The image is cut into 16 MiB blocks; the first DATA_PERCENT of each block is pseudo-random
(AES-128-CTR keystream from `openssl enc`, deterministic for a seed), the rest is a hole
(never written, so the file is sparse and reads back as zeros). Random data defeats any
compression or dedup in the contenders; the holes exercise zero detection in converters and
sinks. The file is written to OUT.tmp and renamed, so a killed run never leaves a short image.
"""
import os
import subprocess
import sys

BLOCK = 16 << 20


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, size_mib = sys.argv[1], int(sys.argv[2])
    pct = int(sys.argv[3]) if len(sys.argv) > 3 else 75
    seed = sys.argv[4] if len(sys.argv) > 4 else "imgpipe"
    if not 0 < pct <= 100 or size_mib <= 0 or (size_mib << 20) % BLOCK:
        sys.exit("SIZE_MIB must be a multiple of 16 and 0 < DATA_PERCENT <= 100")
    size = size_mib << 20
    data_per_block = BLOCK * pct // 100 // 65536 * 65536
    rng = subprocess.Popen(
        ["openssl", "enc", "-aes-128-ctr", "-pass", "pass:" + seed, "-nosalt", "-pbkdf2",
         "-in", "/dev/zero"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.truncate(size)
        for off in range(0, size, BLOCK):
            f.seek(off)
            left = data_per_block
            while left:
                chunk = rng.stdout.read(min(left, 4 << 20))
                if not chunk:
                    sys.exit("openssl keystream ended early")
                f.write(chunk)
                left -= len(chunk)
    rng.kill()
    rng.wait()
    os.rename(tmp, out)


if __name__ == "__main__":
    main()
