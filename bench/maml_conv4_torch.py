"""Plain-PyTorch reference: conv4 MAML for few-shot image classification (Finn et al., 2017).

This is the baseline that outerloop's Rust implementation is benchmarked against on
Omniglot-style N-way K-shot classification (the real Omniglot or the project's synthetic
stand-in with the same layout). Like bench/maml_sinusoid_torch.py it is written the way MAML
is usually written by hand: a Python loop over the tasks of a meta-batch, a functional
forward pass over explicit parameter tensors, and `torch.autograd.grad(..., create_graph=True)`
for the inner SGD step(s), so the meta-gradient is second order. `--first-order` gives FOMAML.

Data: DATA_ROOT/DATASET/images_{background,evaluation}/<alphabet>/<character>/*.png, as
Omniglot is published (105x105, black strokes on white). Characters of both halves are pooled
in a canonical order (background then evaluation; alphabets, characters and files sorted by
name), shuffled once with numpy.random.default_rng(--split-seed) and split into meta-train /
meta-validation / meta-test in the proportions 1100 : 100 : 423 (exactly those counts for the
1623 real characters). With --rotations (the default) each character's 0/90/180/270 degree
rotations are four classes. Every image is decoded once at start-up: converted to 8-bit grey,
resized with Lanczos to --image-size, stored as 1 - p/255 (strokes are 1) in one in-memory
tensor; this start-up is timed separately from training. An episode draws N classes, then
K + Q instances of each, without replacement; labels are 0..N-1 in the order drawn.

Model: conv4, four blocks of Conv2d(3x3, padding 1) -> BatchNorm2d -> ReLU -> MaxPool2d(2)
and a Linear head, PyTorch's default init. Batch norm is transductive as in MAML's reference
code: it always normalises with the statistics of the current forward batch and keeps no
running statistics; its weight and bias are adapted in the inner loop like every parameter.
Defaults are the paper's Omniglot 5-way 1-shot setting: 60,000 meta-steps of meta-batch 32,
one inner step with learning rate 0.4, Adam 0.001 outside, 10 inner steps at test time.

Usage:
    python bench/maml_conv4_torch.py --data-root DIR [--dataset omniglot] [--steps 60000]
        [--threads 1] [--count-flops] [--save params.safetensors]

Progress goes to stderr; the last line of stdout is one JSON object with the timing (training
loop only, episode sampling included, image decoding excluded) and evaluation figures.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

HALVES = ("images_background", "images_evaluation")
# Omniglot's 1623 characters split as in Vinyals et al. / Finn et al.
SPLIT_TRAIN, SPLIT_VAL, SPLIT_TOTAL = 1100, 100, 1623


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True, help="folder holding the dataset folder")
    p.add_argument("--dataset", default="omniglot", help="dataset folder name under --data-root")
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--rotations", action=argparse.BooleanOptionalAction, default=True,
                   help="each character's 0/90/180/270 degree rotations are four classes")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--queries", type=int, default=1, help="query examples per class")
    p.add_argument("--filters", type=int, default=64)
    p.add_argument("--steps", type=int, default=60000)
    p.add_argument("--meta-batch", type=int, default=32)
    p.add_argument("--inner-steps", type=int, default=1)
    p.add_argument("--inner-lr", type=float, default=0.4)
    p.add_argument("--meta-lr", type=float, default=0.001)
    p.add_argument("--first-order", action="store_true")
    p.add_argument("--eval-episodes", type=int, default=600)
    p.add_argument("--eval-inner-steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--count-flops", action="store_true",
                   help="count the FLOPs of one (extra, untimed, unapplied) meta-step first")
    p.add_argument("--save", type=str, default=None, help="safetensors path for final parameters")
    args = p.parse_args()
    if args.image_size < 16:
        p.error("--image-size must be at least 16 (four 2x2 poolings)")
    if min(args.ways, args.shots, args.queries, args.steps, args.meta_batch) < 1:
        p.error("--ways, --shots, --queries, --steps and --meta-batch must be at least 1")
    if args.eval_episodes < 2:
        p.error("--eval-episodes must be at least 2")
    return args


def list_characters(root):
    """PNG paths per character, in the canonical order (halves, alphabets, characters, files)."""
    characters = []
    for half in HALVES:
        half_dir = os.path.join(root, half)
        if not os.path.isdir(half_dir):
            sys.exit(f"error: {half_dir} is not a folder (expected the Omniglot layout)")
        for alphabet in sorted(os.listdir(half_dir)):
            alphabet_dir = os.path.join(half_dir, alphabet)
            if not os.path.isdir(alphabet_dir):
                continue
            for character in sorted(os.listdir(alphabet_dir)):
                char_dir = os.path.join(alphabet_dir, character)
                if not os.path.isdir(char_dir):
                    continue
                files = sorted(f for f in os.listdir(char_dir) if f.endswith(".png"))
                if not files:
                    sys.exit(f"error: {char_dir} holds no .png file")
                characters.append([os.path.join(char_dir, f) for f in files])
    return characters


def load_images(characters, size):
    """Decode every image once into one (n_images, size, size) float tensor.

    Images of a character are contiguous; returns the tensor and each character's first index
    and image count. Omniglot's PNGs are 1-bit, and Pillow silently resizes 1-bit images with
    NEAREST whatever filter is asked for, so they are converted to 8-bit grey first.
    """
    counts = np.array([len(files) for files in characters], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    images = np.empty((int(counts.sum()), size, size), dtype=np.float32)
    i = 0
    for files in characters:
        for path in files:
            with Image.open(path) as im:
                grey = im.convert("L").resize((size, size), Image.LANCZOS)
            images[i] = 1.0 - np.asarray(grey, dtype=np.float32) / 255.0
            i += 1
    return torch.from_numpy(images), starts, counts


def split_characters(n, split_seed):
    """Character indices of meta-train, meta-validation and meta-test (1100 : 100 : 423).

    round() never meets a tie here: 1623 is coprime with 2200 and 200, so n * 1100 / 1623 and
    n * 100 / 1623 are never half-integers.
    """
    order = np.random.default_rng(split_seed).permutation(n)
    n_train = round(n * SPLIT_TRAIN / SPLIT_TOTAL)
    n_val = round(n * SPLIT_VAL / SPLIT_TOTAL)
    return order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]


class EpisodeSampler:
    """N-way K-shot episodes over the classes of one split, from the decoded-image tensor."""

    def __init__(self, images, starts, counts, chars, rotations, ways, shots, queries):
        n_rot = 4 if rotations else 1
        # Class c is character class_char[c] rotated by class_rot[c] quarter turns.
        self.class_char = np.repeat(chars, n_rot)
        self.class_rot = np.tile(np.arange(n_rot), len(chars))
        self.images, self.starts, self.counts = images, starts, counts
        self.ways, self.shots, self.queries = ways, shots, queries

    def num_classes(self):
        return len(self.class_char)

    def check(self, split_name):
        """Exit with a clear message if this split cannot make an episode."""
        if self.num_classes() < self.ways:
            sys.exit(f"error: the {split_name} split has {self.num_classes()} classes, "
                     f"fewer than --ways {self.ways}")
        fewest = int(self.counts[self.class_char].min())
        if fewest < self.shots + self.queries:
            sys.exit(f"error: a {split_name} character has {fewest} images, fewer than "
                     f"--shots + --queries = {self.shots + self.queries}")

    def sample(self, rng):
        """One episode: xs (N*K,1,S,S), ys (N*K,), xq (N*Q,1,S,S), yq (N*Q,), class-major."""
        per_class = self.shots + self.queries
        picked = []
        for c in rng.choice(self.num_classes(), self.ways, replace=False):
            char = self.class_char[c]
            idx = self.starts[char] + rng.choice(self.counts[char], per_class, replace=False)
            picked.append(torch.rot90(self.images[torch.from_numpy(idx)],
                                      int(self.class_rot[c]), dims=(1, 2)))
        x = torch.stack(picked).unsqueeze(2)  # (N, K+Q, 1, S, S)
        size = x.shape[-1]
        labels = torch.arange(self.ways)
        return (x[:, :self.shots].reshape(-1, 1, size, size),
                labels.repeat_interleave(self.shots),
                x[:, self.shots:].reshape(-1, 1, size, size),
                labels.repeat_interleave(self.queries))


def init_params(filters, image_size, ways):
    """Parameters of the conv4 nn.Sequential, PyTorch's default init.

    Building the real module gives the exact default initialisation and the usual state_dict
    names (block b: conv `4b.*`, batch norm `4b+1.*`; the Linear after a Flatten is `17.*`).
    BatchNorm2d without running statistics is transductive batch norm, so the module loads
    the saved parameters strictly and computes what forward() below computes.
    """
    layers, channels, s = [], 1, image_size
    for _ in range(4):
        layers += [torch.nn.Conv2d(channels, filters, 3, padding=1),
                   torch.nn.BatchNorm2d(filters, track_running_stats=False),
                   torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
        channels, s = filters, s // 2
    layers += [torch.nn.Flatten(), torch.nn.Linear(filters * s * s, ways)]
    net = torch.nn.Sequential(*layers)
    names = [n for n, _ in net.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in net.parameters()]
    return names, params


def forward(params, x):
    """Functional conv4 forward: params = [conv W, conv b, bn weight, bn bias] * 4 + [W, b]."""
    for b in range(4):
        w, bias, gamma, beta = params[4 * b:4 * b + 4]
        x = F.conv2d(x, w, bias, padding=1)
        x = F.batch_norm(x, None, None, gamma, beta, training=True)
        x = F.max_pool2d(F.relu(x), 2)
    return F.linear(x.flatten(1), params[16], params[17])


def adapt(params, xs, ys, steps, lr, create_graph):
    """Inner loop: `steps` plain SGD steps on the support cross-entropy.

    With create_graph=True the update stays in the graph, so backpropagating the query loss
    through it yields the second-order MAML gradient. With False the inner gradients come back
    detached, which is exactly first-order MAML.
    """
    fast = params
    for _ in range(steps):
        loss = F.cross_entropy(forward(fast, xs), ys)
        grads = torch.autograd.grad(loss, fast, create_graph=create_graph)
        fast = [w - lr * g for w, g in zip(fast, grads)]
    return fast


def meta_loss(params, episodes, args):
    """Mean post-adaptation query loss over the episodes, and the number of correct queries."""
    total, correct = 0.0, 0
    for xs, ys, xq, yq in episodes:
        fast = adapt(params, xs, ys, args.inner_steps, args.inner_lr, not args.first_order)
        logits = forward(fast, xq)
        total = total + F.cross_entropy(logits, yq)
        correct += int((logits.argmax(1) == yq).sum())
    return total / len(episodes), correct


def count_flops(params, sampler, rng, args):
    """FLOPs of one meta-step (forward, inner gradients, meta-backward) per episode.

    FlopCounterMode counts convolutions and matrix products (batch norm, ReLU, pooling and
    Adam's element-wise update are not counted). The meta-gradient is computed and dropped.
    """
    from torch.utils.flop_counter import FlopCounterMode

    episodes = [sampler.sample(rng) for _ in range(args.meta_batch)]
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = meta_loss(params, episodes, args)
        loss.backward()
    for p in params:
        p.grad = None
    return counter.get_total_flops() / args.meta_batch


def evaluate(params, sampler, rng, args):
    """Meta-test accuracy after --eval-inner-steps SGD steps from the meta-parameters.

    Returns the mean accuracy and its 95% CI over episodes, the mean query loss after
    adaptation and the mean accuracy before it.
    """
    acc, loss, before = [], [], []
    for _ in range(args.eval_episodes):
        xs, ys, xq, yq = sampler.sample(rng)
        fast = adapt(params, xs, ys, args.eval_inner_steps, args.inner_lr, create_graph=False)
        with torch.no_grad():
            logits = forward(fast, xq)
            acc.append((logits.argmax(1) == yq).float().mean().item())
            loss.append(F.cross_entropy(logits, yq).item())
            before.append((forward(params, xq).argmax(1) == yq).float().mean().item())
    acc = np.array(acc)
    ci95 = 1.96 * acc.std(ddof=1) / math.sqrt(len(acc))
    return float(acc.mean()), float(ci95), float(np.mean(loss)), float(np.mean(before))


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    # Independent streams for training episodes, evaluation episodes and the FLOP-counting
    # step, so counting FLOPs leaves the training run unchanged.
    train_ss, eval_ss, flops_ss = np.random.SeedSequence(args.seed).spawn(3)
    train_rng, eval_rng = np.random.default_rng(train_ss), np.random.default_rng(eval_ss)

    t0 = time.perf_counter()
    characters = list_characters(os.path.join(args.data_root, args.dataset))
    images, starts, counts = load_images(characters, args.image_size)
    startup_seconds = time.perf_counter() - t0
    train_chars, val_chars, test_chars = split_characters(len(characters), args.split_seed)
    samplers = {}
    for name, chars in (("meta-train", train_chars), ("meta-test", test_chars)):
        samplers[name] = EpisodeSampler(images, starts, counts, chars, args.rotations,
                                        args.ways, args.shots, args.queries)
        samplers[name].check(name)
    train_sampler, test_sampler = samplers["meta-train"], samplers["meta-test"]
    print(f"[torch] {args.dataset}: {len(characters)} characters, {len(images)} images decoded "
          f"in {startup_seconds:.1f}s; characters train/val/test {len(train_chars)}/"
          f"{len(val_chars)}/{len(test_chars)}, classes train {train_sampler.num_classes()}, "
          f"test {test_sampler.num_classes()}", file=sys.stderr)

    names, params = init_params(args.filters, args.image_size, args.ways)
    opt = torch.optim.Adam(params, lr=args.meta_lr)
    algorithm = "fomaml" if args.first_order else "maml"
    flops_per_episode = None
    if args.count_flops:
        flops_per_episode = count_flops(params, train_sampler, np.random.default_rng(flops_ss),
                                        args)
        print(f"[torch] {flops_per_episode / 1e9:.3f} GFLOP per episode", file=sys.stderr)

    log_every = max(1, args.steps // 10)
    print(f"[torch] {algorithm} conv4: {args.ways}-way {args.shots}-shot, steps={args.steps} "
          f"meta_batch={args.meta_batch} threads={torch.get_num_threads()} "
          f"torch={torch.__version__}", file=sys.stderr)
    window_loss, window_correct, window_steps = 0.0, 0, 0
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        episodes = [train_sampler.sample(train_rng) for _ in range(args.meta_batch)]
        opt.zero_grad(set_to_none=True)
        loss, correct = meta_loss(params, episodes, args)
        loss.backward()
        opt.step()
        window_loss += loss.item()
        window_correct += correct
        window_steps += 1
        if step % log_every == 0 or step == args.steps:
            queries = window_steps * args.meta_batch * args.ways * args.queries
            print(f"[torch] step {step:>6}  meta-loss {window_loss / window_steps:.4f}  "
                  f"train acc {window_correct / queries:.3f}  "
                  f"({time.perf_counter() - t0:.1f}s)", file=sys.stderr)
            window_loss, window_correct, window_steps = 0.0, 0, 0
    train_seconds = time.perf_counter() - t0

    acc_mean, acc_ci, loss_mean, acc_before = evaluate(params, test_sampler, eval_rng, args)
    print(f"[torch] eval on {args.eval_episodes} meta-test episodes: accuracy {acc_mean:.4f} "
          f"+/- {acc_ci:.4f} (before adaptation {acc_before:.4f}), query loss {loss_mean:.4f}",
          file=sys.stderr)

    if args.save:
        from safetensors.torch import save_file
        save_file({n: p.detach().contiguous() for n, p in zip(names, params)}, args.save)

    result = {
        "impl": "pytorch",
        "algorithm": algorithm,
        "dataset": args.dataset,
        "ways": args.ways,
        "shots": args.shots,
        "queries": args.queries,
        "meta_batch": args.meta_batch,
        "inner_steps": args.inner_steps,
        "inner_lr": args.inner_lr,
        "meta_lr": args.meta_lr,
        "eval_inner_steps": args.eval_inner_steps,
        "filters": args.filters,
        "image_size": args.image_size,
        "rotations": args.rotations,
        "steps": args.steps,
        "seed": args.seed,
        "split_seed": args.split_seed,
        "threads": torch.get_num_threads(),
        "train_seconds": train_seconds,
        "episodes_per_s": args.steps * args.meta_batch / train_seconds,
        "startup_seconds": startup_seconds,
        "eval_episodes": args.eval_episodes,
        "eval_accuracy_mean": acc_mean,
        "eval_accuracy_ci95": acc_ci,
        "eval_loss_mean": loss_mean,
        "eval_accuracy_before_mean": acc_before,
        "torch_version": torch.__version__,
    }
    if flops_per_episode is not None:
        result["flops_per_episode"] = flops_per_episode
    print(json.dumps(result))


if __name__ == "__main__":
    main()
