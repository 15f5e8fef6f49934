#!/usr/bin/env python3
"""PyTorch reference for `metricunet bench train` / `bench infer` (run by hand, not in CI).

The same network (Table I UNet: encoder 32/64/128/256, decoder 128/64/256, 1x1 head, 3 input
slices), the same loss (cross-entropy, plus for `hcp` lambda x a triplet + positive-pair loss on
k = 20 anchors per image with m = 1 positive and negative each, on the 256-channel conv6d map) and
the same SGD step (momentum 0.9, weight decay 1e-4), same shapes (64 x 64 patches), same thread
count. Timings: median of --steps steps after --warmup, forward / backward / optimizer separately;
peak RSS of a fresh process per case.

    python3 bench/pytorch_reference.py --threads 2 --batches 1,8,30 --json bench/pytorch_cpu.json
    python3 bench/pytorch_reference.py --device cuda ...        # where a GPU is present

The anchors here are drawn uniformly among foreground / background voxels (torch.multinomial
over the masks, vectorised over the batch); metricunet's hard-negative and contour-aware
samplers choose them by probability and contour distance. The sampling is a few hundred voxels
either way; its cost is small next to the convolutions. On CUDA the peak GPU memory
(torch.cuda.max_memory_allocated and max_memory_reserved) is recorded too. `--amp bf16` runs
the training steps under torch.autocast(bfloat16), the counterpart of metricunet's
`training.precision: bf16` (`bench train --precision bf16`).
"""
import argparse
import json
import multiprocessing as mp
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvBnRelu(nn.Sequential):
    def __init__(self, cin, cout, k):
        super().__init__(nn.Conv2d(cin, cout, k, padding=k // 2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


# (input slices, encoder widths, decoder widths) of `metricunet bench train --models`
NETWORKS = {
    "paper": (3, (32, 64, 128, 256), (128, 64, 256)),
    # the main job's stage-2 network (experiments/quickstart.yaml)
    "quickstart": (3, (8, 16, 32, 64), (32, 16, 32)),
}


class UNet(nn.Module):
    def __init__(self, cin=3, enc=(32, 64, 128, 256), dec=(128, 64, 256)):
        super().__init__()
        self.enc = nn.ModuleList()
        c = cin
        for w in enc:
            self.enc.append(nn.Sequential(ConvBnRelu(c, w, 3), ConvBnRelu(w, w, 3)))
            c = w
        self.up, self.dec = nn.ModuleList(), nn.ModuleList()
        for j, w in enumerate(dec):
            skip = enc[len(enc) - 2 - j]
            self.up.append(nn.ConvTranspose2d(c, w, 2, stride=2))
            self.dec.append(nn.Sequential(ConvBnRelu(w + skip, w, 3), ConvBnRelu(w, w, 3)))
            c = w
        self.sega = ConvBnRelu(c, c, 1)
        self.segb = nn.Conv2d(c, 2, 1)

    def forward(self, x):
        skips = []
        for i, block in enumerate(self.enc):
            x = block(x)
            if i < len(self.enc) - 1:
                skips.append(x)
                x = F.max_pool2d(x, 2)
        for up, block, skip in zip(self.up, self.dec, reversed(skips)):
            x = block(torch.cat([up(x), skip], 1))
        return self.segb(self.sega(x)), x


def metric_loss(emb, labels, gen, k=20, sigma=1.0, eps=0.01, beta=0.1):
    """Triplet (hinge, margin sigma) + beta x positive-pair term, squared L2, mean over tuples.

    Vectorised over the batch (no Python loop, no host synchronisation): k anchors, positives
    and negatives per image and per class drawn with torch.multinomial from the label masks.
    """
    n, c, h, w = emb.shape
    flat = emb.permute(0, 2, 3, 1).reshape(n, h * w, c)
    fg = (labels.reshape(n, h * w) == 1).float()
    bg = 1.0 - fg

    def pick(idx):
        return torch.gather(flat, 1, idx.unsqueeze(-1).expand(-1, -1, c))

    terms = []
    for same, other in ((fg, bg), (bg, fg)):
        a = torch.multinomial(same, k, replacement=True, generator=gen)
        p = torch.multinomial(same, k, replacement=True, generator=gen)
        q = torch.multinomial(other, k, replacement=True, generator=gen)
        ea, ep, eq = pick(a), pick(p), pick(q)
        dp = ((ea - ep) ** 2).sum(-1)
        dn = ((ea - eq) ** 2).sum(-1)
        terms.append(F.relu(dp - dn + sigma).mean(1) + beta * (dp + eps).mean(1))
    return torch.stack(terms).mean()


def batch(n, size, device, seed=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    y = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) <= (size / 5) ** 2).long().expand(n, size, size).contiguous()
    return x.to(device), y.to(device)


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def set_tf32(args):
    """--tf32 default: PyTorch's defaults (cuDNN convolutions may use TF32, matmuls not);
    off: strict f32 everywhere."""
    if args.tf32 == "off":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def time_train(args, variant, n, out):
    set_tf32(args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = args.device
    net = UNet(*NETWORKS[args.model]).to(dev).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x, y = batch(n, args.size, dev)
    gen = torch.Generator(device=dev).manual_seed(1)
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    fw, bw, op = [], [], []
    # --amp bf16: the forward (network and loss) under autocast, as a mixed-precision user
    # writes it: convolutions in bf16, BatchNorm, loss, weights and optimizer in f32
    amp = args.amp == "bf16"
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        with torch.autocast(device_type=dev, dtype=torch.bfloat16, enabled=amp):
            logits, emb = net(x)
            loss = F.cross_entropy(logits.float(), y)
            if variant == "hcp":
                loss = loss + 0.01 * metric_loss(emb.float(), y, gen)
        loss.item()
        sync(dev)
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync(dev)
        t2 = time.perf_counter()
        opt.step()
        sync(dev)
        t3 = time.perf_counter()
        if i >= args.warmup:
            fw.append(t1 - t0)
            bw.append(t2 - t1)
            op.append(t3 - t2)
    step = [a + b + c for a, b, c in zip(fw, bw, op)]
    out.put({
        "label": f"{args.model} {variant}", "batch": n, "size": args.size, "steps": args.steps,
        "forward_s": statistics.median(fw), "backward_s": statistics.median(bw),
        "optimizer_s": statistics.median(op), "step_s": statistics.median(step),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if dev == "cuda" else None,
        "peak_gpu_reserved_mb": torch.cuda.max_memory_reserved() / 2**20 if dev == "cuda" else None,
        "amp": args.amp,
    })


def time_infer(args, n, size, out):
    set_tf32(args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = UNet(*NETWORKS[args.model]).to(args.device).eval()
    x = torch.rand(n, 3, size, size).to(args.device)
    ts = []
    with torch.no_grad():
        for i in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            net(x)
            sync(args.device)
            if i >= args.warmup:
                ts.append(time.perf_counter() - t0)
    out.put({"label": f"inference {n} x {size} x {size}", "batch": n, "size": size,
             "forward_s": statistics.median(ts),
             "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def in_fresh_process(target, *a):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*a, q))
    p.start()
    r = q.get()
    p.join()
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(NETWORKS), default="paper",
                    help="paper (Table I) or quickstart (the main job's stage-2 network, "
                         "as `bench train --models quickstart`)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,8,30")
    ap.add_argument("--variants", default="unet,hcp")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tf32", choices=["default", "off"], default="default",
                    help="CUDA: PyTorch's default (TF32 in cuDNN convolutions) or strict f32")
    ap.add_argument("--infer", choices=["yes", "no", "only"], default="yes",
                    help="the inference forwards (1 and 16 slices of 128 x 128): with the training "
                         "steps, not at all, or alone")
    ap.add_argument("--amp", choices=["off", "bf16"], default="off",
                    help="bf16: training steps under torch.autocast(bfloat16), as metricunet's "
                         "training.precision: bf16")
    ap.add_argument("--json")
    args = ap.parse_args()
    results = []
    batches = [] if args.infer == "only" else [int(b) for b in args.batches.split(",")]
    for n in batches:
        for v in args.variants.split(","):
            r = in_fresh_process(time_train, args, v, n)
            results.append(r)
            print(f"| {r['label']} | {n} | {r['forward_s']:.3f} | {r['backward_s']:.3f} | {r['optimizer_s']:.4f} "
                  f"| {r['step_s']:.3f} | {n / r['step_s']:.2f} | {r['peak_rss_mb']:.0f} |", flush=True)
    for n, size in ((1, 128), (16, 128)) if args.infer != "no" else ():
        r = in_fresh_process(time_infer, args, n, size)
        results.append(r)
        print(f"| {r['label']} | forward {r['forward_s']:.3f} s | peak {r['peak_rss_mb']:.0f} MB |", flush=True)
    meta = {"benchmark": "pytorch_reference", "model": args.model, "torch": torch.__version__, "device": args.device,
            "tf32": args.tf32 if args.device == "cuda" else None, "amp": args.amp,
            "threads": args.threads, "results": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(meta, f, indent=2)


if __name__ == "__main__":
    main()
