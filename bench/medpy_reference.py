#!/usr/bin/env python3
"""Independent reference for `metricunet eval`: the same six metrics computed with medpy.

Run by hand (not in CI):  pip install medpy nibabel
    python3 bench/medpy_reference.py PRED.nii.gz REF.nii.gz [--label N] [--ref-label M] [--csv OURS.csv]
With --csv (the file `metricunet eval --csv` wrote for the same pair) it prints the differences.
"""
import argparse
import csv

import nibabel as nib
import numpy as np
from medpy.metric import binary as mb


def mask(path, label):
    img = nib.load(path)
    data = np.asarray(img.dataobj)
    return (data == label) if label is not None else (data != 0), img.header.get_zooms()[:3]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("pred")
    ap.add_argument("ref")
    ap.add_argument("--label", type=int)
    ap.add_argument("--ref-label", type=int)
    ap.add_argument("--csv")
    a = ap.parse_args()
    p, _ = mask(a.pred, a.label)
    r, sp = mask(a.ref, a.ref_label)
    ref = {
        # paper Eq. 6: the mean of the two directed mean surface distances
        "asd": 0.5 * (mb.asd(p, r, sp) + mb.asd(r, p, sp)),
        # medpy >= 0.5 assd: both directions pooled
        "assd": mb.assd(p, r, sp),
        "dsc": mb.dc(p, r),
        "hd95": mb.hd95(p, r, sp),
        "ppv": mb.precision(p, r),
        "sen": mb.sensitivity(p, r),
    }
    for k, v in ref.items():
        print(f"{k:5} {v:.10f}")
    if a.csv:
        row = next(csv.DictReader(open(a.csv)))
        print("largest |metricunet - medpy|:", max(abs(float(row[k]) - v) for k, v in ref.items()))


if __name__ == "__main__":
    main()
