#!/usr/bin/env python3
"""Summarizes `dcb-store bench --json` lines: median and spread (min..max) of repeated
runs as a Markdown table, then the performance targets as ratios from the same run.

Usage: scripts/summarize.py RESULTS.jsonl [PG_LIMIT.jsonl]"""
import json
import statistics
import sys
from collections import defaultdict

def main():
    args = sys.argv[1:]
    runs = [json.loads(l) for l in open(args[0]) if l.strip()]
    pg = [json.loads(l) for l in open(args[1]) if l.strip()] if len(args) > 1 else []
    groups = defaultdict(list)
    for r in runs:
        groups[(r["workload"], r["mode"], r["clients"], r.get("prefill"))].append(r)

    def med(key, rs):
        vals = [r[key] for r in rs]
        return statistics.median(vals), min(vals), max(vals)

    print("| workload | mode | clients | prefill | ops/s median (min..max) | p50 ms | p99 ms | cpu s | peak RSS MiB | batch | invariants |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    summary = {}
    for key in sorted(groups, key=lambda k: (k[0], k[3] or 0, k[1], k[2])):
        rs = groups[key]
        ops = med("ops_per_s", rs)
        p50 = med("p50_ms", rs)
        p99 = med("p99_ms", rs)
        summary[key] = {"ops": ops[0], "p50": p50[0], "p99": p99[0], "rss": max(r["peak_rss_mib"] for r in rs)}
        inv = {True: "PASS", False: "FAIL", None: "-"}
        invariants = ",".join(sorted({inv[r.get("invariants")] for r in rs}))
        print(f"| {key[0]} | {key[1]} | {key[2]} | {key[3] or '-'} | {ops[0]:.0f} ({ops[1]:.0f}..{ops[2]:.0f}) | "
              f"{p50[0]:.2f} | {p99[0]:.2f} | {med('cpu_s', rs)[0]:.2f} | {max(r['peak_rss_mib'] for r in rs):.1f} | "
              f"{med('batch_mean', rs)[0]:.1f} | {invariants} |")
    if pg:
        print()
        print("| pg-limit case | clients | events/s |")
        print("|---|---:|---:|")
        for r in pg:
            print(f"| {r['case']} | {r['clients']} | {r['events_per_s']} |")

    def get(w, m, c, p=None):
        return summary.get((w, m, c, p))

    print()
    print("Targets:")
    a, nb = get("append", "normal", 64), get("append", "no-batching", 64)
    if a and nb:
        print(f"- append K=64: {a['ops']:.0f}/s = {a['ops'] / nb['ops']:.1f}x no-batching ({nb['ops']:.0f}/s); target 8x")
    multi = [r["events_per_s"] for r in pg if r["case"] == "100-event-insert"]
    if a and multi:
        for r in pg:
            if r["case"] == "100-event-insert":
                print(f"  vs PostgreSQL 100-event inserts, {r['clients']} client(s): {r['events_per_s']}/s -> {a['ops'] / float(r['events_per_s']):.2f} (target 0.5)")
    e, enb = get("enrolment", "normal", 32), get("enrolment", "no-batching", 32)
    if e and enb:
        print(f"- enrolment K=32: {e['ops']:.0f}/s = {e['ops'] / enb['ops']:.1f}x no-batching; target 5x")
    e1 = get("enrolment", "normal", 1)
    if e1:
        print(f"- enrolment K=1 p50: {e1['p50']:.2f} ms; target <= 2 ms")
    for q in ("read:tag", "read:type+tag"):
        small, big = get(q, "normal", 1, 100000), get(q, "normal", 1, 5000000)
        if small and big:
            print(f"- {q} p50 at 5M / at 100k: {big['p50']:.3f} / {small['p50']:.3f} ms = {big['p50'] / small['p50']:.2f}; target <= 1.3")
        nc = get(q, "no-cache", 1, 100000)
        if small and nc:
            print(f"- {q} @100k cache vs no-cache p50: {small['p50']:.3f} vs {nc['p50']:.3f} ms")
    nm = get("append", "no-metrics", 64)
    if a and nm:
        print(f"- metrics on vs off at append K=64: {a['ops']:.0f} vs {nm['ops']:.0f} = {100 * (nm['ops'] - a['ops']) / nm['ops']:+.1f}% ; target < 3%")
    a256, a2000 = get("append", "normal", 256), get("append", "normal", 2000)
    if a256:
        print(f"- peak RSS at append K=256: {a256['rss']:.1f} MiB; target < 64")
    if a2000:
        print(f"- overload K=2000: {a2000['ops']:.0f}/s, peak RSS {a2000['rss']:.1f} MiB")

main()
