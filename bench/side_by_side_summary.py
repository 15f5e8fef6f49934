"""Summarise bench/side_by_side.sh's rounds: per case, each framework's median step and range
over the rounds, the median and range of the per-round ratio candle / PyTorch (each round's
two runs were made back to back), and the median peak RSS. Writes every round and the summary
as JSON and prints a Markdown table.

    python3 bench/side_by_side_summary.py ROUNDS_DIR OUT.json CPU_MODEL CPU_FLAGS THREADS WHEN

ROUNDS_DIR holds candle_<round>_<variant>_<batch>.json and torch_<round>_<variant>_<batch>.json
(the `--json` outputs of `metricunet bench train` and `bench/pytorch_reference.py`).

It may also hold infer_candle_<round>.json (`metricunet bench infer --json`) and
torch_<round>_infer.json (`pytorch_reference.py --infer only`): per round, candle's stage-2 crop
(one slice of 128 x 128 per crop depth) is set beside PyTorch's forward of 16 such slices scaled
to the crop's slice count: PyTorch's time for the same slices, not a whole case of its own (its
stage 1 and preprocessing are not timed).
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


def inference(folder, torch):
    """Per round, the stage-2 crop of candle's `bench infer` (infer_candle_<round>.json) against
    PyTorch's forward of 16 slices of 128 x 128 in the same round, scaled to the crop's slices."""
    ours = {}
    for path in glob.glob(os.path.join(folder, "infer_candle_*.json")):
        m = re.match(r"infer_candle_(\d+)\.json$", os.path.basename(path))
        if m:
            with open(path) as f:
                ours[int(m.group(1))] = json.load(f)
    theirs = torch.get(("inference 16 x 128 x 128", 16), {})
    paired = sorted(r for r in set(ours) & set(theirs) if ours[r]["crop"][:2] == [128, 128])
    if not paired:
        return None
    crop = [ours[r]["stage2_crop_s"] for r in paired]
    same = [theirs[r]["forward_s"] * ours[r]["crop"][2] / 16 for r in paired]
    ratios = [a / b for a, b in zip(crop, same)]

    def spread(v):
        return {"median": statistics.median(v), "min": min(v), "max": max(v)}
    return {
        "rounds": len(paired), "crop": ours[paired[0]]["crop"],
        "candle_crop_s": spread(crop),
        "candle_whole_case_s": spread([ours[r]["whole_case_s"] for r in paired]),
        "candle_peak_rss_mb": statistics.median(ours[r]["peak_rss_mb"] for r in paired),
        "torch_same_slices_s": spread(same),
        "ratio_crop": spread(ratios),
        "note": "PyTorch: its forward of 16 slices x (crop slices / 16), not a whole case of its "
                "own (no stage 1, no preprocessing); candle: the stage-2 crop of bench infer",
    }


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
    infer = inference(folder, torch)
    doc = {
        "when": when, "cpu": model, "cpu_flags": flags.split(), "threads": int(threads),
        "note": "candle and PyTorch alternately, one process per case and framework; "
                "ratio = candle / PyTorch per round",
        "summary": rows,
        "inference": infer,
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
    if infer:
        c, t, q = infer["candle_crop_s"], infer["torch_same_slices_s"], infer["ratio_crop"]
        print(f"\ninference, {infer['crop'][2]} slices of 128 x 128, {infer['rounds']} rounds: candle "
              f"{c['median']:.1f} s [{c['min']:.1f}, {c['max']:.1f}], PyTorch {t['median']:.1f} s "
              f"[{t['min']:.1f}, {t['max']:.1f}] (16-slice forward x {infer['crop'][2] / 16:g}): "
              f"{q['median']:.2f}x [{q['min']:.2f}, {q['max']:.2f}]")


if __name__ == "__main__":
    main()
