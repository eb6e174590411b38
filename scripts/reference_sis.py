#!/usr/bin/env python3
"""Independent reference implementation of Sufficient Input Subsets, in plain PyTorch.

Written from the pseudo-code of Carter et al. 2019 ("What made you do this?",
BackSelect, FindSIS, SIScollection) and of Carter et al. 2021 ("Overinterpretation
reveals image classification model pathologies", S5: Batched Gradient BackSelect and
its FindSIS). It shares no code with the Rust engine (`src/sis`); the tests compare the
two (tests/reference.rs), and the benchmarks time the engine against it, so it is a
fair peer: parameters frozen, no_grad wherever the algorithm allows, candidates batched.

Definitions (as in the paper and the project's design):
  * a feature is a pixel (all channels); a masked pixel is 0 after normalization;
  * the target class c is the model's prediction on the full image, f its softmax
    probability (fp32, as the model computes it);
  * BackSelect compares candidates by L = logsumexp_{j != c}(z_j - z_c), computed in
    float64 from the model's fp32 logits z. log f = -softplus(L), so the smallest L is
    the largest f, but L does not round away when an fp32 softmax gives f = 1.0.

Where the pseudo-code is loose, this follows Carter et al. 2019 and the design:
  * exact BackSelect removes the candidate with the smallest L; exact ties go to the
    lowest pixel index (torch.argmin returns the first minimum);
  * Batched Gradient BackSelect ranks pixels by -dL/dM plus Gaussian noise of std 1e-6
    (its own seeded torch.Generator; the paper adds the noise to its gradient of f);
    inside a block of k pixels removed at one step, pixels count as removed in
    descending score (the highest score first, as k = 1 steps would remove them), so
    the lowest-scoring pixel of a block is the one kept longest;
  * FindSIS starts from the fully masked input and restores the removed pixels (exact)
    or blocks (gradient) from the last removed backwards, re-evaluating the model, until
    f(x_S) >= tau; the empty set counts when the fully masked input already reaches tau;
  * SIScollection: if f(x) < tau there is none; otherwise repeat BackSelect on the
    pixels not yet in an SIS, FindSIS, remove the SIS, until the remaining pixels give
    f < tau (or nothing or an empty SIS is left). Returns the list of disjoint SISes.

Near-ties are reported, not hidden: for exact BackSelect, a step whose two best
candidates' L differ by less than 1e-6; for the gradient method, a step where two of
the scores that decide it (the k+1 largest noise-free scores) differ by less than 1e-5,
i.e. within about 7 standard deviations of the difference of two noise draws, where the
noise may decide; for FindSIS and the collection's stopping test, an f within 1e-6 of tau.

Usage:
  scripts/reference_sis.py --model M.pt (--images DIR | --cifar10 DIR) --indices 0,1,2 \
      --method exact|gradient [--k 4] [--thresholds 0.3,0.9] [--max-steps N] --out result.json
--images DIR holds t10k-images-idx3-ubyte (IDX, as the Rust data loader reads it; --mean/--std
default to Fashion-MNIST's); --cifar10 DIR holds test_batch.bin (CIFAR-10's per-channel
mean/std). Collections (--thresholds) are computed for every image and tau, their rounds
pooled into one BackSelect call each. --max-steps stops BackSelect early (benchmarks).
"seconds" in the output times the work after loading and an untimed warm-up. The output
is JSON, one object per image.
"""

import argparse
import gzip
import json
import math
import os
import struct
import time

import numpy as np
import torch

EXACT_TIE = 1e-6
GRAD_TIE = 1e-5
TAU_TIE = 1e-6
NOISE_STD = 1e-6


def read_idx_images(directory):
    """uint8 images [N, H, W] from DIR/t10k-images-idx3-ubyte[.gz]."""
    for name in ("t10k-images-idx3-ubyte", "t10k-images-idx3-ubyte.gz"):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            data = gzip.open(path).read() if name.endswith(".gz") else open(path, "rb").read()
            magic, n, h, w = struct.unpack(">IIII", data[:16])
            if magic != 0x803:
                raise SystemExit(f"{path}: not an IDX images file (magic {magic:#x})")
            return np.frombuffer(data, np.uint8, offset=16).reshape(n, h, w)
    raise SystemExit(f"{directory}: no t10k-images-idx3-ubyte[.gz]")


def read_cifar10_test(directory):
    """uint8 images [N, 3, H, W] from DIR/test_batch.bin (3073-byte records: label, R, G, B planes)."""
    path = os.path.join(directory, "test_batch.bin")
    if not os.path.exists(path):
        path = os.path.join(directory, "cifar-10-batches-bin", "test_batch.bin")
    data = np.fromfile(path, np.uint8)
    if len(data) == 0 or len(data) % 3073:
        raise SystemExit(f"{path}: not a CIFAR-10 binary batch ({len(data)} bytes)")
    return data.reshape(-1, 3073)[:, 1:].reshape(-1, 3, 32, 32)


def normalize(u8, mean, std):
    """[N, C, H, W] float32: x/255 - mean, / std per channel (the data loader's float32 ops);
    mean and std are float32 arrays of C values."""
    x = torch.from_numpy(np.ascontiguousarray(u8)).float()
    c = x.shape[1]
    return x.div(255.0).sub(torch.from_numpy(mean).view(1, c, 1, 1)).div(torch.from_numpy(std).view(1, c, 1, 1))


def log_odds(logits, target):
    """L = logsumexp_{j != c}(z_j - z_c) in float64, per row; differentiable."""
    z = logits.double()
    d = z - z.gather(1, target[:, None])
    own = torch.zeros_like(d, dtype=torch.bool).scatter_(1, target[:, None], True)
    return torch.logsumexp(d.masked_fill(own, -math.inf), dim=1)


def confidence(logits, target):
    """f: fp32 softmax probability of the target class."""
    return torch.softmax(logits.float(), dim=1).gather(1, target[:, None])[:, 0]


class Reference:
    def __init__(self, model_path, batch):
        self.model = torch.jit.load(model_path, map_location="cpu").eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.batch = batch
        self.forwards = 0

    def warm_up(self, xs, target):
        """A few untimed forwards and backwards, so the TorchScript executor has made its
        optimized plans before the clock starts (the engine's module is warm too)."""
        n = self.forwards
        for _ in range(3):
            with torch.no_grad():
                self.logits(xs[:1].expand(self.batch, -1, -1, -1).contiguous())
            m = torch.zeros(len(xs), 1, xs.shape[2], xs.shape[3], requires_grad=True)
            torch.autograd.grad(log_odds(self.logits(xs * (1.0 - m)), target).sum(), m)
        self.forwards = n

    def logits(self, xs):
        self.forwards += len(xs)
        return self.model(xs)

    def f_of_sets(self, x, target, sets):
        """f(x_S) for each pixel set S of one image (only S present), batched, no grad."""
        return self.f_of([(x, target, s) for s in sets])

    def f_of(self, items):
        """f(x_S) for each (x [C,H,W], target, pixel set S), batched, no grad."""
        out = []
        with torch.no_grad():
            for i in range(0, len(items), self.batch):
                chunk = items[i:i + self.batch]
                h, w = chunk[0][0].shape[1:]
                keep = torch.zeros(len(chunk), h * w)
                for r, (_, _, s) in enumerate(chunk):
                    keep[r, list(s)] = 1.0
                xs = torch.stack([x for x, _, _ in chunk]) * keep.view(-1, 1, h, w)
                t = torch.tensor([t for _, t, _ in chunk], dtype=torch.long)
                out.append(confidence(self.logits(xs), t))
        return torch.cat(out).tolist() if out else []

    # ---- exact BackSelect (Carter et al. 2019), candidates of all jobs pooled ----
    def backselect_exact(self, jobs, max_steps=None):
        """jobs: list of (x [C,H,W], present pixel list, target). Returns per job
        (blocks, history, first near-tie step or None); max_steps cuts it short
        (benchmarks: the traces are then partial)."""
        h, w = jobs[0][0].shape[1:]
        p = h * w
        rem = [sorted(present) for _, present, _ in jobs]
        cur = torch.stack([x * _keep(present, p).view(1, h, w) for x, present, _ in jobs])
        targets = torch.tensor([t for _, _, t in jobs])
        out = [([], [], None) for _ in jobs]
        steps = 0
        with torch.no_grad():
            while any(rem) and (max_steps is None or steps < max_steps):
                steps += 1
                cand = [(j, q) for j, r in enumerate(rem) for q in r]
                L_all, f_all = [], []
                for i in range(0, len(cand), self.batch):
                    chunk = cand[i:i + self.batch]
                    jj = torch.tensor([j for j, _ in chunk])
                    qq = torch.tensor([q for _, q in chunk])
                    xs = cur[jj]  # advanced indexing copies: no clone needed
                    xs.view(len(chunk), -1, p)[torch.arange(len(chunk)), :, qq] = 0.0
                    z = self.logits(xs)
                    L_all.append(log_odds(z, targets[jj]))
                    f_all.append(confidence(z, targets[jj]))
                L_all, f_all = torch.cat(L_all), torch.cat(f_all)
                start = 0
                for j, r in enumerate(rem):
                    if not r:
                        continue
                    L = L_all[start:start + len(r)]
                    best = int(torch.argmin(L))
                    gap = float(torch.topk(L, 2, largest=False).values.diff()[0]) if len(r) > 1 else math.inf
                    blocks, hist, tie = out[j]
                    if tie is None and gap < EXACT_TIE:
                        tie = len(blocks)
                    blocks.append([r[best]])
                    hist.append(float(f_all[start + best]))
                    out[j] = (blocks, hist, tie)
                    cur[j].view(-1, p)[:, r[best]] = 0.0
                    start += len(r)
                    del r[best]
        return out

    # ---- Batched Gradient BackSelect (S5), one backward per step for all jobs ----
    def backselect_gradient(self, jobs, k, gen, max_steps=None):
        h, w = jobs[0][0].shape[1:]
        p = h * w
        xs = torch.stack([x for x, _, _ in jobs])
        targets = torch.tensor([t for _, _, t in jobs])
        removed = torch.stack([1.0 - _keep(present, p) for _, present, _ in jobs])  # M
        left = [len(present) for _, present, _ in jobs]
        out = [([], [], None) for _ in jobs]
        steps = math.ceil(max(left) / k)
        for step in range(steps if max_steps is None else min(steps, max_steps)):
            m = removed.clone().requires_grad_(True)
            z = self.logits(xs * (1.0 - m).view(-1, 1, h, w))
            (grad,) = torch.autograd.grad(log_odds(z, targets).sum(), m)
            f = confidence(z.detach(), targets)
            score = -grad
            noisy = score + NOISE_STD * torch.randn(score.shape, generator=gen, dtype=score.dtype)
            noisy = noisy.masked_fill(removed > 0.5, -math.inf)
            for j in range(len(jobs)):
                if left[j] == 0:
                    continue
                blocks, hist, tie = out[j]
                if step > 0:
                    hist.append(float(f[j]))
                take = min(k, left[j])
                idx = torch.topk(noisy[j], take).indices  # descending: removal order
                if tie is None:
                    clean = score[j].masked_fill(removed[j] > 0.5, -math.inf)
                    top = torch.topk(clean, min(take + 1, left[j])).values
                    if len(top) > 1 and float((top[:-1] - top[1:]).min()) < GRAD_TIE:
                        tie = step
                blocks.append(idx.tolist())
                removed[j, idx] = 1.0
                left[j] -= take
                out[j] = (blocks, hist, tie)
        with torch.no_grad():
            f = confidence(self.logits(xs * (1.0 - removed).view(-1, 1, h, w)), targets)
        for j in range(len(jobs)):
            if out[j][0]:
                out[j][1].append(float(f[j]))
        return out

    # ---- FindSIS: restore from the end, re-evaluating (S5 / Carter et al. 2019) ----
    def find_sis(self, x, target, blocks, tau):
        """(SIS, near_tau): the smallest union of trailing blocks with f >= tau."""
        near = False
        chunk = 32
        for first in range(0, len(blocks) + 1, chunk):
            sets = []
            for j in range(first, min(first + chunk, len(blocks) + 1)):
                sets.append(sorted(q for b in blocks[len(blocks) - j:] for q in b))
            for s, f in zip(sets, self.f_of_sets(x, target, sets)):
                near |= abs(f - tau) < TAU_TIE
                if f >= tau:
                    return s, near
        return sorted(q for b in blocks for q in b), near

    def collections(self, xs, preds, confs, taus, backselect, first):
        """SIScollection for every image and tau: {(i, tau): (SISes, near-tie seen)}.

        Rounds are pooled, as a fair peer batches its work: each round runs one
        BackSelect call over every collection still open (the gradient method then
        takes one backward per step for all of them, exact pools their candidates)."""
        p = xs.shape[2] * xs.shape[3]
        out, open_ = {}, []
        for i in range(len(xs)):
            for tau in taus:
                near = abs(confs[i] - tau) < TAU_TIE
                if confs[i] < tau:
                    out[(i, tau)] = ([], near)
                else:
                    open_.append({"i": i, "tau": tau, "present": set(range(p)), "sis": [],
                                  "near": near, "round": first[i]})
        while open_:
            left = []
            for job in open_:
                i, tau = job["i"], job["tau"]
                blocks, _, tie = job["round"]
                job["near"] |= tie is not None
                s, near_tau = self.find_sis(xs[i], preds[i], blocks, tau)
                job["near"] |= near_tau
                job["sis"].append(s)
                job["present"] -= set(s)
                if s and job["present"]:
                    left.append(job)
                else:
                    out[(i, tau)] = (job["sis"], job["near"])
            f_left = self.f_of([(xs[j["i"]], preds[j["i"]], sorted(j["present"])) for j in left])
            open_ = []
            for job, f in zip(left, f_left):
                job["near"] |= abs(f - job["tau"]) < TAU_TIE
                if f < job["tau"]:
                    out[(job["i"], job["tau"])] = (job["sis"], job["near"])
                else:
                    open_.append(job)
            if open_:
                rounds = backselect([(xs[j["i"]], sorted(j["present"]), preds[j["i"]]) for j in open_])
                for job, rnd in zip(open_, rounds):
                    job["round"] = rnd
        return out


def _keep(present, p):
    k = torch.zeros(p)
    k[list(present)] = 1.0
    return k


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="folder with t10k-images-idx3-ubyte")
    src.add_argument("--cifar10", help="folder with test_batch.bin (CIFAR-10 binary; CIFAR-10's mean/std)")
    ap.add_argument("--indices", required=True, help="comma-separated image indices")
    ap.add_argument("--mean", type=float, default=0.2860)
    ap.add_argument("--std", type=float, default=0.3530)
    ap.add_argument("--method", choices=["exact", "gradient"], required=True)
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--thresholds", default="", help="comma-separated taus for collections")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=256, help="candidates per forward")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--max-steps", type=int, default=None,
                    help="stop BackSelect after this many steps (benchmarks; no collections then)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    indices = [int(i) for i in a.indices.split(",")]
    taus = [float(t) for t in a.thresholds.split(",") if t]
    if a.max_steps is not None and taus:
        raise SystemExit("--max-steps gives partial BackSelects: no --thresholds with it")
    if a.cifar10:
        images = read_cifar10_test(a.cifar10)
        mean = np.float32([125.3, 123.0, 113.9]) / np.float32(255.0)
        std = np.float32([63.0, 62.1, 66.7]) / np.float32(255.0)
    else:
        images = read_idx_images(a.images)[:, None]
        mean, std = np.float32([a.mean]), np.float32([a.std])
    ref = Reference(a.model, a.batch)
    gen = torch.Generator().manual_seed(a.seed)
    xs = normalize(images[indices], mean, std)
    with torch.no_grad():
        z = ref.logits(xs)
        pred = z.argmax(1)
        conf = confidence(z, pred)
    p = xs.shape[2] * xs.shape[3]
    if a.method == "exact":
        backselect = lambda jobs: ref.backselect_exact(jobs, a.max_steps)  # noqa: E731
    else:
        backselect = lambda jobs: ref.backselect_gradient(jobs, a.k, gen, a.max_steps)  # noqa: E731
    ref.warm_up(xs, pred)
    started = time.time()
    first = backselect([(xs[i], list(range(p)), int(pred[i])) for i in range(len(indices))])
    preds = [int(t) for t in pred]
    confs = [float(f) for f in conf]
    colls = ref.collections(xs, preds, confs, taus, backselect, first) if taus else {}
    results = []
    for i, index in enumerate(indices):
        blocks, hist, tie = first[i]
        step = [0] * p
        rank = [0] * p
        for s, b in enumerate(blocks):
            for r, q in enumerate(b):
                step[q], rank[q] = s, r
        coll = {}
        for tau in taus:
            sis, near = colls[(i, tau)]
            coll[repr(tau)] = {"sis": sis, "near_tie": near}
        results.append({
            "index": index,
            "predicted": preds[i],
            "confidence": confs[i],
            "order": [q for b in blocks for q in b],
            "removal_step": step,
            "rank_in_block": rank,
            "confidence_history": hist,
            "first_near_tie": tie,
            "collections": coll,
        })
    seconds = time.time() - started
    with open(a.out, "w") as f:
        json.dump({"seconds": seconds, "forwards": ref.forwards, "images": results}, f)


if __name__ == "__main__":
    main()
