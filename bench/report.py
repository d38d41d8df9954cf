#!/usr/bin/env python3
"""Render bench/run.sh raw data (fs, metric, rep, value TSV) as markdown tables."""
import os
import statistics
import sys
from collections import defaultdict


def size_label(mib):
    mib = int(mib)
    return f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib} MiB"


SEQ = size_label(os.environ.get("SEQ_MB", "1024"))
RAND = size_label(os.environ.get("RAND_MB", "256"))

# metric key, label, higher_is_better
METRICS = [
    ("seq_write_MBps", f"seq write {SEQ}, MB/s", True),
    ("seq_read_MBps", f"seq read {SEQ} (cold), MB/s", True),
    ("rand_read_iops", f"rand read 4 KiB ({RAND} file), IOPS", True),
    ("rand_write_iops", f"rand write 4 KiB ({RAND} file), IOPS", True),
    ("tree_extract_s", "tree: tar -xf, s", False),
    ("tree_ls_s", "tree: ls -lR, s", False),
    ("tree_cat_s", "tree: read all (after remount), s", False),
    ("tree_rm_s", "tree: rm -rf, s", False),
    ("mem_MiB", "daemon peak RSS (VmHWM), MiB", False),
]


def load(path):
    vals = defaultdict(list)
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 4:
                continue
            fs, metric, _rep, value = parts
            if metric == "mem_kb_instance":
                vals[(fs, "mem_kb")].append(value)
            else:
                vals[(fs, metric)].append(value)
    med = {}
    for (fs, metric), vs in vals.items():
        if metric == "mem_kb":
            med[(fs, "mem_MiB")] = max(float(v) for v in vs) / 1024.0
        elif any(v == "FAIL" for v in vs):
            med[(fs, metric)] = "FAIL"
        else:
            med[(fs, metric)] = statistics.median(float(v) for v in vs)
    return vals, med


def fmt(v):
    if v is None:
        return "–"
    if v == "FAIL":
        return "**FAIL**"
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def ratio(a, b, higher_better):
    if not isinstance(a, float) or not isinstance(b, float) or a <= 0 or b <= 0:
        return None
    return a / b if higher_better else b / a


def main():
    path, fs_list = sys.argv[1], sys.argv[2].split()
    vals, med = load(path)
    present = [m for m in METRICS if any((fs, m[0]) in med for fs in fs_list)]

    print("## Medians")
    print()
    rows = [[label] + [fmt(med.get((fs, key))) for fs in fs_list] for key, label, _ in present]
    print(table(["workload"] + fs_list, rows))
    print()

    if "gocryptfs" in fs_list:
        print("## Relative to gocryptfs (> 1 = better than gocryptfs)")
        print()
        print("Throughput/IOPS: fs / gocryptfs. Times and memory: gocryptfs / fs.")
        print()
        rows = []
        for key, label, hb in present:
            row = [label]
            for fs in fs_list:
                a, b = med.get((fs, key)), med.get(("gocryptfs", key))
                if a == "FAIL":
                    row.append("**FAIL**")
                    continue
                r = ratio(a, b, hb)
                row.append("–" if r is None else f"{r:.2f}×")
            rows.append(row)
        print(table(["workload"] + fs_list, rows))
        print()

    if "digimedfs" in fs_list and "bindfs" in fs_list:
        print("## digimedfs as % of the bindfs passthrough (> 100% = faster than passthrough)")
        print()
        rows = []
        for key, label, hb in present:
            if key == "mem_MiB":
                continue
            a, b = med.get(("digimedfs", key)), med.get(("bindfs", key))
            r = ratio(a, b, hb)
            rows.append([label, "**FAIL**" if a == "FAIL" else ("–" if r is None else f"{100 * r:.0f}%")])
        print(table(["workload", "digimedfs / bindfs"], rows))
        print()

    print("<details><summary>All repetitions</summary>")
    print()
    rows = []
    for key, label, _ in present:
        for fs in fs_list:
            k = "mem_kb" if key == "mem_MiB" else key
            vs = vals.get((fs, k))
            if vs:
                if key == "mem_MiB":
                    vs = [f"{float(v) / 1024:.1f}" for v in vs]
                rows.append([label, fs, ", ".join(vs)])
    print(table(["workload", "fs", "values (per rep; memory: per daemon instance)"], rows))
    print()
    print("</details>")


if __name__ == "__main__":
    main()
