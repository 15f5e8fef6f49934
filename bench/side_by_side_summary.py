"""Summarise bench/side_by_side.sh's rounds: per case, each framework's median step and range
over the rounds, the median and range of the per-round ratio candle / PyTorch (each round's
two runs were made back to back), and the median peak RSS. Writes every round and the summary
as JSON and prints a Markdown table.

    python3 bench/side_by_side_summary.py ROUNDS_DIR OUT.json CPU_MODEL CPU_FLAGS THREADS WHEN

ROUNDS_DIR holds candle_<round>_<variant>_<batch>.json and torch_<round>_<variant>_<batch>.json
(the `--json` outputs of `metricunet bench train` and `bench/pytorch_reference.py`).
"""
import glob
import json
import os
import re
import statistics
import sys


def rounds(folder, framework):
    """{(label, batch): {round: result}} from the JSON files of one framework."""
    out = {}
    for path in glob.glob(os.path.join(folder, f"{framework}_*.json")):
        m = re.match(rf"{framework}_(\d+)_", os.path.basename(path))
        if not m:
            continue
        with open(path) as f:
            for r in json.load(f)["results"]:
                out.setdefault((r["label"], r["batch"]), {})[int(m.group(1))] = r
    return out


def summary(candle, torch):
    rows = []
    for key in sorted(set(candle) & set(torch)):
        c, t = candle[key], torch[key]
        paired = sorted(set(c) & set(t))
        if not paired:
            continue
        cs = [c[r]["step_s"] for r in paired]
        ts = [t[r]["step_s"] for r in paired]
        ratios = [a / b for a, b in zip(cs, ts)]
        rows.append({
            "label": key[0], "batch": key[1], "rounds": len(paired),
            "candle_step_s": {"median": statistics.median(cs), "min": min(cs), "max": max(cs)},
            "torch_step_s": {"median": statistics.median(ts), "min": min(ts), "max": max(ts)},
            "ratio": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
            "candle_peak_rss_mb": statistics.median(c[r]["peak_rss_mb"] for r in paired),
            "torch_peak_rss_mb": statistics.median(t[r]["peak_rss_mb"] for r in paired),
        })
    return rows


def table(rows):
    lines = [
        "| case | batch | rounds | candle step (s), median [range] | PyTorch step (s), median [range] "
        "| ratio, median [range] | peak RSS candle / PyTorch (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c, t, q = r["candle_step_s"], r["torch_step_s"], r["ratio"]
        lines.append(
            f"| {r['label']} | {r['batch']} | {r['rounds']} "
            f"| {c['median']:.3f} [{c['min']:.3f}, {c['max']:.3f}] "
            f"| {t['median']:.3f} [{t['min']:.3f}, {t['max']:.3f}] "
            f"| {q['median']:.2f}x [{q['min']:.2f}, {q['max']:.2f}] "
            f"| {r['candle_peak_rss_mb']:.0f} / {r['torch_peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def main():
    folder, dest, model, flags, threads, when = sys.argv[1:7]
    candle, torch = rounds(folder, "candle"), rounds(folder, "torch")
    rows = summary(candle, torch)
    doc = {
        "when": when, "cpu": model, "cpu_flags": flags.split(), "threads": int(threads),
        "note": "candle and PyTorch alternately, one process per case and framework; "
                "ratio = candle / PyTorch per round",
        "summary": rows,
        "rounds": {
            fw: [dict(r, round=k) for runs in data.values() for k, r in sorted(runs.items())]
            for fw, data in (("candle", candle), ("torch", torch))
        },
    }
    with open(dest + ".tmp", "w") as f:
        json.dump(doc, f, indent=2)
    os.replace(dest + ".tmp", dest)
    print(f"CPU: {model} ({flags.strip()}), {threads} threads")
    print(table(rows))


if __name__ == "__main__":
    main()
