#!/usr/bin/env python3
"""Plot a benches/compare.sh result as an SVG bar chart (stdlib only, no matplotlib).

    benches/plot.py compare.json compare.svg

One horizontal bar per contender: throughput in MB/s (virtual image bytes / wall time,
median), imgpipe configurations in blue, peers in grey, the two parts of the bound in orange,
and a dashed line at the bound (the slower of single-core SHA-512 and O_DIRECT dd).
"""
import json
import sys
from xml.sax.saxutils import escape

ORDER = ["a", "a_http", "b", "c", "d", "e", "chain", "qemu.fast", "qemu.default",
         "bound.sha512", "bound.sha512q", "bound.dd"]
SHORT = {
    "a": "(a) raw, sha512 + inspect → file",
    "a_http": "(a) over HTTP",
    "b": "(b) (a) + RSA-PSS signature",
    "c": "(c) qcow2 → raw + sha512",
    "d": "(d) HTTP, signed + LUKS1",
    "e": "(e) cache hit, re-verified",
    "chain": "Nova-style chain (work of d)",
    "qemu.fast": "qemu-img convert -W -m16 -t none",
    "qemu.default": "qemu-img convert (defaults)",
    "bound.sha512": "openssl dgst -sha512 (1 core)",
    "bound.sha512q": "openssl dgst -sha512 of the qcow2",
    "bound.dd": "dd bs=4M oflag=direct",
}


def color(name):
    if name.startswith("bound."):
        return "#e08a1e"
    if name in ("chain", "qemu.fast", "qemu.default"):
        return "#8c8c8c"
    return "#2f6db5"


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        res = json.load(f)
    c = res["contenders"]
    names = [n for n in ORDER if n in c]
    meta = res.get("meta", {})
    top, left, bar, gap, width = 56, 230, 22, 8, 420
    height = top + len(names) * (bar + gap) + 44
    vmax = max([c[n]["mb_per_s"] for n in names] + [res.get("bound", {}).get("mb_per_s", 0)])
    scale = width / (vmax * 1.12)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 90}" '
           f'height="{height}" font-family="sans-serif" font-size="12">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="10" y="20" font-size="14" font-weight="bold">imgpipe vs the bound and '
           f'the peers: throughput, MB/s ({escape(str(meta.get("size_mib")))} MiB image, '
           f'median of {escape(str(meta.get("runs")))})</text>',
           f'<text x="10" y="38" fill="#555">{escape(meta.get("cpu", ""))}, '
           f'{escape(str(meta.get("cores", "")))} cores, {escape(meta.get("fs", ""))}, '
           f'{escape(meta.get("date", ""))}</text>']
    for i, n in enumerate(names):
        y = top + i * (bar + gap)
        w = c[n]["mb_per_s"] * scale
        out.append(f'<text x="{left - 8}" y="{y + bar * 0.7:.1f}" text-anchor="end">'
                   f'{escape(SHORT.get(n, n))}</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar}" '
                   f'fill="{color(n)}"/>')
        out.append(f'<text x="{left + w + 4:.1f}" y="{y + bar * 0.7:.1f}">'
                   f'{c[n]["mb_per_s"]:.0f}</text>')
    bottom = top + len(names) * (bar + gap)
    if "bound" in res:
        x = left + res["bound"]["mb_per_s"] * scale
        out.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{bottom}" '
                   'stroke="#c0392b" stroke-width="1.5" stroke-dasharray="5,4"/>')
        out.append(f'<text x="{x:.1f}" y="{bottom + 30}" fill="#c0392b" text-anchor="middle">'
                   f'bound {res["bound"]["mb_per_s"]:.0f} MB/s</text>')
    out.append(f'<line x1="{left}" y1="{top - 6}" x2="{left}" y2="{bottom}" stroke="black"/>')
    for i, (col, what) in enumerate((("#2f6db5", "imgpipe"), ("#8c8c8c", "peers"),
                                     ("#e08a1e", "parts of the bound"))):
        x = 10 + i * 110
        out.append(f'<rect x="{x}" y="{bottom + 8}" width="10" height="10" fill="{col}"/>')
        out.append(f'<text x="{x + 14}" y="{bottom + 17}">{what}</text>')
    out.append("</svg>")
    with open(sys.argv[2], "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
