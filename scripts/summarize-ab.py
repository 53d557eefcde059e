#!/usr/bin/env python3
"""Medians, spread and after/before ratios of an interleaved A/B run (scripts/ab.sh)."""
import json
import statistics
import sys
from collections import defaultdict

runs = defaultdict(lambda: defaultdict(list))
for line in open(sys.argv[1]):
    o = json.loads(line)
    key = (o["workload"], o.get("query") or o.get("decider") or "", o["clients"])
    runs[key][o["side"]].append((o["ops_per_s"], o["p50_ms"]))

def fmt(values):
    med = statistics.median(values)
    return f"{med:,.0f} ({min(values):,.0f}..{max(values):,.0f})"

print("| workload | clients | before ops/s (min..max) | after ops/s (min..max) | ratio | p50 ms before → after |")
print("|---|---|---|---|---|---|")
for key in sorted(runs):
    sides = runs[key]
    if not sides.get("before") or not sides.get("after"):
        continue
    b = [v for v, _ in sides["before"]]
    a = [v for v, _ in sides["after"]]
    pb = statistics.median(p for _, p in sides["before"])
    pa = statistics.median(p for _, p in sides["after"])
    name = key[0] + (f" {key[1]}" if key[1] else "")
    ratio = statistics.median(a) / statistics.median(b)
    print(f"| {name} | {key[2]} | {fmt(b)} | {fmt(a)} | {ratio:.2f} | {pb:.3f} → {pa:.3f} |")

if len(sys.argv) > 2:
    demo = defaultdict(list)
    for line in open(sys.argv[2]):
        parts = line.split()
        side = parts[0]
        for i, word in enumerate(parts):
            if word.startswith("decisions/s"):
                demo[side].append(float(parts[i - 1]))
    if demo.get("before") and demo.get("after"):
        b, a = demo["before"], demo["after"]
        print(f"| demo decisions/s | 32 | {fmt(b)} | {fmt(a)} | {statistics.median(a) / statistics.median(b):.2f} | |")
