#!/usr/bin/env python3
"""Medians (min..max) over the rounds of a side-by-side.sh run, and the ratios of issue 22.

Usage: scripts/peers/summarize.py RUN.jsonl
"""
import collections
import json
import statistics
import sys


def key(row):
    workload = row.get("workload") or row.get("case")
    return row["system"], workload, row["clients"]


def rate(row):
    # Appended events (or decisions that appended) per second: pgbench's events/s,
    # UmaDB's ops/s (it counts appended decisions), dcb-store's events/s.
    if row["system"].startswith("pgbench"):
        return float(row["events_per_s"])
    if row["system"] == "umadb":
        return float(row["ops_per_s"])
    return float(row["events_per_s"])


def main(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    rates = collections.defaultdict(list)
    p50s = collections.defaultdict(list)
    extra = collections.defaultdict(list)
    for row in rows:
        rates[key(row)].append(rate(row))
        if row.get("p50_ms") is not None:
            p50s[key(row)].append(float(row["p50_ms"]))
        if row.get("batch_mean") is not None:
            extra[key(row)].append(row["batch_mean"])
        if row.get("invariants") is not None:
            extra[key(row) + ("inv",)].append(row["invariants"])

    def med(k):
        return statistics.median(rates[k]) if rates.get(k) else None

    def p50(k):
        return statistics.median(p50s[k]) if p50s.get(k) else None

    print("| system | workload | K | rounds | per s, median (min..max) | p50 ms (min..max) | appends/batch |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for k in sorted(rates):
        r, p = rates[k], p50s.get(k, [])
        spread = f"{statistics.median(r):,.0f} ({min(r):,.0f}..{max(r):,.0f})"
        lat = f"{statistics.median(p):.3f} ({min(p):.3f}..{max(p):.3f})" if p else "-"
        batch = f"{statistics.median(extra[k]):.1f}" if extra.get(k) else "-"
        inv = extra.get(k + ("inv",))
        flag = "" if inv is None else (" inv PASS" if all(v in (True, "PASS") for v in inv) else " inv FAIL")
        print(f"| {k[0]} | {k[1]}{flag} | {k[2]} | {len(r)} | {spread} | {lat} | {batch} |")

    print()
    print("Ratios of medians (issue 22's targets):")
    store, before = "dcb-store", "dcb-store-before"
    single, simple = ("pgbench", "single-event-insert"), ("pgbench-simple", "single-event-insert")

    def ratio(a, b, label, target=None):
        if a is None or b is None:
            return
        text = f"- {label}: {a / b:.2f}"
        if target:
            text += f" (target {target})"
        print(text)

    ratio(p50((store, "append", 1)), p50(single + (1,)), "lone append p50 / pgbench prepared one-row insert p50", "<= 1.2")
    ratio(p50((store, "append", 1)), p50(simple + (1,)), "lone append p50 / pgbench simple-protocol insert p50")
    for k in (1, 8, 32):
        ratio(med((store, "append", k)), med(single + (k,)), f"appends/s K={k} / pgbench one-row inserts/s",
              {8: ">= 1", 32: ">= 1.5"}.get(k))
        ratio(med((store, "append", k)), med(("umadb", "append", k)), f"appends/s K={k} / UmaDB", ">= 1.5")
        ratio(med((store, "append", k)), med((before, "append", k)), f"appends/s K={k} / before")
    ratio(med((store, "append", 256)), med(("pgbench", "100-event-insert", 1)),
          "appends/s K=256 / one backend's 100-row inserts (events/s)", ">= 0.9")
    ratio(med((store, "append", 256)), med((before, "append", 256)), "appends/s K=256 / before")
    for k in (1, 8, 32):
        ratio(med((store, "enrolment:decide", k)), med(("umadb", "enrolment", k)),
              f"decide K={k}, appended decisions/s / UmaDB", ">= 2" if k == 1 else None)
        ratio(med((store, "enrolment:decide", k)), med((before, "enrolment:decide", k)), f"decide K={k} / before")
    d1 = p50((store, "enrolment:decide", 1))
    if d1 is not None:
        print(f"- decide K=1 p50: {d1:.3f} ms (target <= 0.8)")


if __name__ == "__main__":
    main(sys.argv[1])
