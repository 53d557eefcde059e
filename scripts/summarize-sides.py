#!/usr/bin/env python3
"""Medians, spread and ratios to the first side of an interleaved run with named sides:
   summarize-sides.py RUN.jsonl BASELINE OTHER..."""
import json
import statistics
import sys
from collections import defaultdict

path, sides = sys.argv[1], sys.argv[2:]
runs = defaultdict(lambda: defaultdict(list))
for line in open(path):
    o = json.loads(line)
    key = (o["workload"], o.get("query") or o.get("decider") or "", o["clients"])
    runs[key][o["side"]].append(o["ops_per_s"])

head = " | ".join(f"{s} ops/s (min..max) | ratio" for s in sides[1:])
print(f"| workload | clients | {sides[0]} ops/s (min..max) | {head} |")
print("|---|---|---|" + "---|---|" * len(sides[1:]))
for key in sorted(runs):
    by = runs[key]
    if not all(by.get(s) for s in sides):
        continue
    base = statistics.median(by[sides[0]])
    cells = [f"{statistics.median(by[sides[0]]):,.0f} ({min(by[sides[0]]):,.0f}..{max(by[sides[0]]):,.0f})"]
    for s in sides[1:]:
        med = statistics.median(by[s])
        cells.append(f"{med:,.0f} ({min(by[s]):,.0f}..{max(by[s]):,.0f}) | {med / base:.2f}")
    name = key[0] + (f" {key[1]}" if key[1] else "")
    print(f"| {name} | {key[2]} | " + " | ".join(cells) + " |")
