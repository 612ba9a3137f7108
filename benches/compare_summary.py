#!/usr/bin/env python3
"""Summarise a benches/compare.sh run: medians, ratios against the issue-10 targets, peak RSS,
the limiting stage of each imgpipe run (from its --json report). Stdlib only.

    benches/compare_summary.py MEASURE.tsv OUT.json [key=value ...]

MEASURE.tsv lines: name, round, wall microseconds, peak RSS KiB, stdout file. `chain.*` steps
of one round are summed into `chain`. The key=value pairs (machine, sizes) go into OUT.json
under "meta". Prints the table as Markdown.
"""
import json
import statistics
import sys
from collections import defaultdict

LABELS = {
    "bound.sha512": "bound: `openssl dgst -sha512` (one core)",
    "bound.dd": "bound: `dd bs=4M oflag=direct` (same fs)",
    "a": "(a) imgpipe raw → sha512 + inspect → file",
    "a_http": "(a) from the local HTTP server",
    "b": "(b) imgpipe (a) + RSA-PSS/SHA-256 signature",
    "c": "(c) imgpipe qcow2 → raw + sha512",
    "d": "(d) imgpipe HTTP → (b) + LUKS1 → file",
    "e": "(e) imgpipe cache hit, re-verified → file",
    "chain": "Nova-style chain for (d), sum of steps",
    "qemu.fast": "`qemu-img convert -W -m 16 -t none` qcow2 → raw",
    "qemu.default": "`qemu-img convert` qcow2 → raw (defaults)",
    "bound.sha512q": "bound of (c): `openssl dgst -sha512` of the qcow2",
    "kdf.qemu": "`qemu-img create -f luks` (qemu's PBKDF calibration)",
    "a_small": "(a), 25 % data, SIZE (RSS pair)",
    "a_big": "(a), 25 % data, BIG (RSS pair)",
    "c_small": "(c), 25 % data, SIZE (RSS pair)",
    "c_big": "(c), 25 % data, BIG (RSS pair)",
}
IMGPIPE = {"a", "a_http", "b", "c", "d", "e", "a_small", "a_big", "c_small", "c_big"}


def limiting(path):
    """The stage with the most busy time in an imgpipe --json report, or None."""
    try:
        with open(path) as f:
            rep = json.load(f)
    except (OSError, ValueError):
        return None
    stages = [s for s in rep.get("stages") or [] if s.get("busy_seconds") is not None]
    if not stages:
        return None
    # The report names it (`limiting_stage`, largest busy time); older reports: same rule here.
    name = rep.get("limiting_stage") or max(stages, key=lambda s: s["busy_seconds"])["name"]
    s = next(x for x in stages if x["name"] == name)
    keys = ("name", "bytes", "busy_seconds", "mb_per_s", "busy_fraction")
    return {"stage": s["name"], "busy_seconds": s["busy_seconds"], "mb_per_s": s.get("mb_per_s"),
            "busy_fraction": s.get("busy_fraction"), "wall_seconds": rep.get("seconds"),
            "stages": [{k: x.get(k) for k in keys} for x in stages]}


def main():
    tsv, out = sys.argv[1], sys.argv[2]
    meta = dict(a.split("=", 1) for a in sys.argv[3:])
    size = int(meta["size_mib"]) << 20
    runs = defaultdict(dict)  # name -> round -> (seconds, rss_kib, file)
    steps = defaultdict(lambda: defaultdict(float))  # round -> step -> seconds
    chain_rss = defaultdict(int)
    with open(tsv) as f:
        for line in f:
            name, rnd, us, rss, path = line.rstrip("\n").split("\t")
            sec, rss = int(us) / 1e6, int(rss)
            if name.startswith("chain."):
                steps[rnd][name] = sec
                chain_rss[rnd] = max(chain_rss[rnd], rss)
            else:
                runs[name][rnd] = (sec, rss, path)
    for rnd, st in steps.items():
        runs["chain"][rnd] = (sum(st.values()), chain_rss[rnd], None)

    res = {"meta": meta, "contenders": {}, "chain_steps": {}, "ratios": {}, "targets": {}}
    for name, by_round in runs.items():
        secs = [v[0] for v in by_round.values()]
        med = statistics.median(secs)
        # The report of the round whose time is closest to the median names the limiting stage.
        rnd = min(by_round, key=lambda r: abs(by_round[r][0] - med))
        nbytes = size
        if name.endswith(("_small", "_big")):
            nbytes = int(meta["big_mib" if name.endswith("_big") else "size_mib"]) << 20
        label = LABELS.get(name, name).replace("SIZE", f"{meta.get('size_mib')} MiB")
        entry = {
            "label": label.replace("BIG", f"{meta.get('big_mib')} MiB"),
            "seconds": sorted(secs),
            "median_s": med,
            "mb_per_s": nbytes / med / 1e6,
            "peak_rss_mib": max(v[1] for v in by_round.values()) / 1024,
            "peak_rss_mib_per_round": [by_round[r][1] / 1024 for r in sorted(by_round)],
        }
        if name in IMGPIPE and by_round[rnd][2]:
            entry["limiting"] = limiting(by_round[rnd][2])
        res["contenders"][name] = entry
    if steps:
        for step in sorted({s for st in steps.values() for s in st}):
            res["chain_steps"][step] = statistics.median(st[step] for st in steps.values() if step in st)

    c = res["contenders"]
    med = lambda n: c[n]["median_s"] if n in c else None  # noqa: E731
    r, t = res["ratios"], res["targets"]
    if med("bound.sha512") and med("bound.dd"):
        bound = max(med("bound.sha512"), med("bound.dd"))
        res["bound"] = {"median_s": bound, "mb_per_s": size / bound / 1e6,
                        "by": "bound.sha512" if med("bound.sha512") >= med("bound.dd") else "bound.dd"}
        if med("a"):
            r["a_over_bound"] = bound / med("a")
            t["a >= 0.9 x bound throughput"] = r["a_over_bound"] >= 0.9
    if med("chain") and med("d"):
        r["chain_over_d"] = med("chain") / med("d")
        if med("kdf.qemu"):
            r["chain_without_qemu_kdf_over_d"] = (med("chain") - med("kdf.qemu")) / med("d")
        t["d >= 6x faster than the chain (qemu KDF calibration excluded)"] = (
            r.get("chain_without_qemu_kdf_over_d", r["chain_over_d"]) >= 6)
    if med("qemu.fast") and med("c"):
        r["qemu_fast_over_c"] = med("qemu.fast") / med("c")
        t["c >= 1.0x qemu-img -W -m 16 -t none"] = r["qemu_fast_over_c"] >= 1.0
    if med("bound.sha512q") and med("c"):
        r["c_over_its_sha512_bound"] = med("bound.sha512q") / med("c")
    if med("qemu.default") and med("c"):
        r["qemu_default_over_c"] = med("qemu.default") / med("c")
    ip = [n for n in c if n in IMGPIPE]
    if ip:
        worst = max(c[n]["peak_rss_mib"] for n in ip)
        t["peak RSS <= 64 MiB in every imgpipe configuration"] = worst <= 64
    for small, big in (("a_small", "a_big"), ("c_small", "c_big")):
        if small in c and big in c:
            # Peak RSS varies by a few MiB from round to round with how many chunks happen to be
            # in flight; "identical" is read as: the larger image's worst round is no higher
            # than the smaller image's worst round (+ 2 MiB), i.e. memory does not grow with size.
            d = c[big]["peak_rss_mib"] - c[small]["peak_rss_mib"]
            r[f"rss_{big}_minus_{small}_mib"] = d
            t[f"RSS of {small[0]}: no growth from {meta.get('size_mib')} to {meta.get('big_mib')} "
              "MiB (worst round, +2 MiB)"] = d <= 2

    with open(out, "w") as f:
        json.dump(res, f, indent=1)

    print(f"\n{meta.get('size_mib')} MiB image, medians of {meta.get('runs')} alternating rounds; "
          f"{meta.get('cpu')}, {meta.get('cores')} cores, kernel {meta.get('kernel')}, "
          f"{meta.get('fs')}; load {meta.get('load_start')} → {meta.get('load_end')}\n")
    print("| contender | median s | MB/s | peak RSS MiB | limiting stage (busy) |")
    print("|---|---|---|---|---|")
    order = ["bound.sha512", "bound.dd", "a", "a_http", "b", "bound.sha512q", "c", "qemu.fast",
             "qemu.default", "d", "chain", "kdf.qemu", "e", "a_small", "a_big", "c_small",
             "c_big"]
    for name in order + sorted(set(c) - set(order)):
        if name not in c:
            if name == "e":
                print(f"| {LABELS['e']} | pending ({meta.get('cache')}) | | | |")
            continue
        e = c[name]
        lim = e.get("limiting")
        lim_s = ""
        if lim:
            stage = lim["stage"]
            if stage.startswith(("sink:", "source:")):  # drop the path / URL
                stage = stage.split(":")[0]
            frac = lim.get("busy_fraction")
            lim_s = f"{stage} ({lim['busy_seconds']:.2f} s" + (
                f", {frac * 100:.0f} % of wall)" if frac is not None else ")")
        timing = f"{e['median_s']:.3f} | {e['mb_per_s']:.0f}"
        if name == "kdf.qemu":
            timing = f"{e['median_s']:.3f} | —"
        rss = e["peak_rss_mib_per_round"]
        rss_s = f"{max(rss):.1f}" if len(rss) == 1 or max(rss) - min(rss) < 0.5 else (
            f"{max(rss):.1f} ({min(rss):.1f}–{max(rss):.1f})")
        print(f"| {e['label']} | {timing} | {rss_s} | {lim_s} |")
    if res["chain_steps"]:
        print("\nchain steps (median s): " + ", ".join(
            f"{k.split('.', 1)[1]} {v:.2f}" for k, v in res["chain_steps"].items()))
    print()
    for k, v in r.items():
        print(f"{k} = {v:.2f}")
    for k, v in t.items():
        print(f"target {'MET' if v else 'MISSED'}: {k}")


if __name__ == "__main__":
    main()
