#!/usr/bin/env python3
"""Inputs of `scripts/bench-vs-reference`, made once and cached in OUT (outside git):

  OUT/cifar-10-batches-bin/test_batch.bin   the first N Fashion-MNIST test images laid out
                                            as 32x32x3 (zero-padded by 2 pixels, the grey
                                            value copied to the three channels), in
                                            CIFAR-10's binary format, so the engine reads
                                            them as `cifar10:OUT` and the reference with
                                            `--cifar10 OUT` (CIFAR-10's mean and std)
  OUT/resnet20_fmnist32.pt                  ResNet20 (He et al., option-A shortcuts, the
                                            layout of src/models/resnet_cifar.rs) trained
                                            briefly on that layout of Fashion-MNIST's
                                            training images, traced in eval mode

Training is short on purpose (STEPS batches of 64, SGD with Nesterov momentum, a cosine
learning rate, seed 0) so it fits a few minutes of 2 CPU cores; it prints the test
accuracy on 2,000 test images. A file that exists is kept: delete it to remake it.

Usage: bench_vs_reference_prep.py OUT [--images N] [--steps STEPS]
"""

import argparse
import gzip
import os
import struct
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CIFAR_MEAN = np.float32([125.3, 123.0, 113.9]) / np.float32(255.0)
CIFAR_STD = np.float32([63.0, 62.1, 66.7]) / np.float32(255.0)


def idx(path):
    for p in (path, path + ".gz"):
        if os.path.exists(p):
            data = gzip.open(p).read() if p.endswith(".gz") else open(p, "rb").read()
            ndim = struct.unpack(">I", data[:4])[0] & 0xFF
            dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
            return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)
    raise SystemExit(f"missing {path}[.gz]: set FASHION_MNIST=DIR")


def rgb32(images):
    """[N, 28, 28] uint8 -> [N, 3, 32, 32] uint8: zero padding, grey copied to RGB."""
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    return np.repeat(padded[:, None], 3, axis=1)


def normalize(u8):
    x = torch.from_numpy(np.ascontiguousarray(u8)).float()
    mean = torch.from_numpy(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.from_numpy(CIFAR_STD).view(1, 3, 1, 1)
    return x.div(255.0).sub(mean).div(std)


class Block(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.pad = (c_out - c_in) // 2
        self.stride = stride

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.stride == 1 and self.pad == 0:
            short = x
        else:
            short = F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + short)


class ResNet20(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, c = [], 16
        for stage, width in enumerate([16, 32, 64]):
            for i in range(3):
                blocks.append(Block(c, width, 2 if stage > 0 and i == 0 else 1))
                c = width
        self.blocks = nn.Sequential(*blocks)
        self.linear = nn.Linear(64, classes)

    def forward(self, x):
        out = self.blocks(F.relu(self.bn1(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--steps", type=int, default=300)
    a = ap.parse_args()
    src = os.environ.get("FASHION_MNIST", "/usr/share/datasets/fashion-mnist")
    data_dir = os.path.join(a.out, "cifar-10-batches-bin")
    os.makedirs(data_dir, exist_ok=True)
    test_x = idx(f"{src}/t10k-images-idx3-ubyte")
    test_y = idx(f"{src}/t10k-labels-idx1-ubyte")
    batch_file = os.path.join(data_dir, "test_batch.bin")
    if not os.path.exists(batch_file) or os.path.getsize(batch_file) != a.images * 3073:
        recs = np.concatenate(
            [test_y[: a.images, None].astype(np.uint8), rgb32(test_x[: a.images]).reshape(a.images, -1)],
            axis=1,
        )
        with open(batch_file + ".tmp", "wb") as f:
            f.write(recs.tobytes())
        os.replace(batch_file + ".tmp", batch_file)
    model_file = os.path.join(a.out, "resnet20_fmnist32.pt")
    if os.path.exists(model_file):
        print(f"prep: cached {model_file}")
        return
    torch.manual_seed(0)
    train_x = idx(f"{src}/train-images-idx3-ubyte")
    train_y = torch.from_numpy(idx(f"{src}/train-labels-idx1-ubyte").astype(np.int64))
    model = ResNet20()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.steps)
    gen = torch.Generator().manual_seed(0)
    started = time.time()
    model.train()
    for step in range(a.steps):
        pick = torch.randint(0, len(train_x), (64,), generator=gen)
        x = normalize(rgb32(train_x[pick.numpy()]))
        loss = F.cross_entropy(model(x), train_y[pick])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        n = 2000
        pred = torch.cat([model(normalize(rgb32(test_x[i:i + 250]))).argmax(1) for i in range(0, n, 250)])
        acc = float((pred == torch.from_numpy(test_y[:n].astype(np.int64))).float().mean())
    traced = torch.jit.trace(model, torch.zeros(2, 3, 32, 32))
    traced.save(model_file + ".tmp")
    os.replace(model_file + ".tmp", model_file)
    print(
        f"prep: trained ResNet20 on Fashion-MNIST 32x32x3 for {a.steps} batches of 64 "
        f"({a.steps * 64} images) in {time.time() - started:.0f} s; test accuracy {100 * acc:.1f}% "
        f"on {n} test images -> {model_file}"
    )


if __name__ == "__main__":
    main()
