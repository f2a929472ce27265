"""Plain-PyTorch reference: one multi-task step with PCGrad or MGDA, written the usual way.

This is the baseline outerloop's multi-task runner is benchmarked against (bench/compare_mtl.py).
It does what LibMTL does with `rep_grad=False`: one forward of the shared layers, then one
backward per task (`torch.autograd.grad(..., retain_graph=True)`) to get that task's gradient
of the shared parameters, flattened into a [tasks, shared parameters] matrix; then the method
turns the matrix into one shared gradient, which is written into `.grad` before an Adam step.
Each head gets its own task's gradient from that task's backward.

Workload (configs/mtl_gradnorm.toml's family): GradNorm's regression data (Chen et al. 2018,
section 4), task i's target sigma_i * tanh((B + eps_i) x) with B ~ N(0, 10^2) and
eps_i ~ N(0, 3.5^2), both [outputs, inputs] and drawn once, sigma_i log-spaced from 1 to 100;
each row's x uniform in [-1, 1]^inputs scaled to unit L2 norm, fresh rows every step. Shared
layers: Linear layers inputs -> hidden... with ReLU after every one (the default 250 -> 1000
-> 750 has about 1M parameters); one Linear head per task (representation -> outputs); each
task's loss is the MSE, a mean over rows and outputs.

Methods:
  pcgrad  PCGrad (Yu et al. 2020): in a fresh random order per task and step, each task's
          gradient is projected onto the normal plane of every other task's original gradient
          it conflicts with (negative dot product), vector by vector as LibMTL does (but, as in
          the paper and outerloop, never against itself); the shared gradient is their sum.
  mgda    MGDA (Sener & Koltun 2018) without gradient normalisation (LibMTL's `mgda_gn=none`):
          the min-norm point of the gradients' convex hull, by their Frank-Wolfe solver, in NumPy
          on the Gram matrix (at most 250 iterations, stopping when the weights move less than
          1e-5).

Usage:
    python bench/mtl_torch.py [--method pcgrad|mgda] [--steps 200] [--threads 1]

Progress goes to stderr; stdout's one line is a JSON object: steps/s and the mean step time
over the steps after --warmup (data generation included), the mean time in the method itself
(from the gradient matrix to the combined shared gradient), and the last step's task losses.
"""
import argparse
import json
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

B_STD = 10.0
EPS_STD = 3.5
MGDA_MAX_ITER = 250
MGDA_STOP = 1e-5


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--method", choices=["pcgrad", "mgda"], default="pcgrad")
    p.add_argument("--steps", type=int, default=200, help="steps run, --warmup included")
    p.add_argument("--warmup", type=int, default=3, help="first steps left out of the timing")
    p.add_argument("--batch", type=int, default=100, help="rows per step")
    p.add_argument("--tasks", type=int, default=10)
    p.add_argument("--inputs", type=int, default=250)
    p.add_argument("--outputs", type=int, default=100)
    p.add_argument("--hidden", default="1000,750", help="shared layers' widths")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    args.hidden = [int(w) for w in args.hidden.split(",") if w]
    if not args.hidden or args.tasks < 1:
        p.error("--hidden needs at least one width and --tasks at least 1")
    if not 0 <= args.warmup < args.steps:
        p.error("--warmup must be at least 0 and below --steps")
    return args


class GradNormData:
    """Task i's target sigma_i * tanh((B + eps_i) x) for rows x of unit norm."""

    def __init__(self, tasks, inputs, outputs, generator):
        self.generator = generator
        self.inputs = inputs
        b = B_STD * torch.randn(outputs, inputs, generator=generator)
        eps = EPS_STD * torch.randn(tasks, outputs, inputs, generator=generator)
        # [tasks, inputs, outputs], so that x @ matrices[i] is task i's pre-activation.
        self.matrices = (b + eps).transpose(1, 2).contiguous()
        self.sigmas = torch.logspace(0, 2, tasks).view(tasks, 1, 1)

    def rows(self, n):
        """x [n, inputs] and every task's target, [tasks, n, outputs]."""
        x = 2 * torch.rand(n, self.inputs, generator=self.generator) - 1
        x = x / x.norm(dim=1, keepdim=True)
        return x, self.sigmas * torch.tanh(x @ self.matrices)


def shared_layers(inputs, hidden):
    layers = []
    for fan_in, fan_out in zip([inputs] + hidden, hidden):
        layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers)


def pcgrad(grads, rng):
    """The sum of the tasks' gradients, each projected off the others it conflicts with."""
    tasks = grads.shape[0]
    square_norms = (grads * grads).sum(1).tolist()
    projected = grads.clone()
    for i in range(tasks):
        others = [j for j in range(tasks) if j != i]
        rng.shuffle(others)
        for j in others:
            dot = torch.dot(projected[i], grads[j]).item()
            if dot < 0:
                projected[i].add_(grads[j], alpha=-dot / square_norms[j])
    return projected.sum(0)


def min_norm_of_two(v1v1, v1v2, v2v2):
    """The c in [0, 1] minimising |c v1 + (1 - c) v2|^2, clipped as Sener & Koltun do, and
    that squared norm."""
    if v1v2 >= v1v1:
        return 0.999, v1v1
    if v1v2 >= v2v2:
        return 0.001, v2v2
    c = (v2v2 - v1v2) / (v1v1 + v2v2 - 2 * v1v2)
    return c, v2v2 + c * (v1v2 - v2v2)


def project_to_simplex(y):
    """The Euclidean projection of y onto the probability simplex."""
    ordered = np.sort(y)[::-1]
    shift = (y.sum() - 1) / len(y)
    total = 0.0
    for i in range(len(y) - 1):
        total += ordered[i]
        candidate = (total - 1) / (i + 1)
        if candidate > ordered[i + 1]:
            shift = candidate
            break
    return np.maximum(y - shift, 0.0)


def frank_wolfe_target(weights, direction):
    """Sener & Koltun's next point: a step along `direction` made to sum to zero, as far as
    the nearest weight reaching 0 or 1 (or 1 long when none does), projected onto the
    simplex."""
    along = direction - direction.sum() / len(direction)
    limits = np.concatenate([-weights[along < 0] / along[along < 0],
                             (1 - weights[along > 0]) / along[along > 0]])
    limits = limits[limits > 1e-7]
    step = limits.min() if len(limits) else 1.0
    return project_to_simplex(weights + step * along)


def min_norm_weights(gram):
    """The weights on the simplex of the min-norm point of the vectors whose Gram matrix is
    `gram`: the best pair's min-norm point, then Frank-Wolfe steps."""
    tasks = len(gram)
    best = None
    for i in range(tasks):
        for j in range(i + 1, tasks):
            c, cost = min_norm_of_two(gram[i, i], gram[i, j], gram[j, j])
            if best is None or cost < best[0]:
                best = (cost, i, j, c)
    weights = np.zeros(tasks)
    if best is None:
        weights[0] = 1.0
        return weights
    _, i, j, c = best
    weights[i], weights[j] = c, 1 - c
    if tasks < 3:
        return weights
    for _ in range(MGDA_MAX_ITER):
        target = frank_wolfe_target(weights, -gram @ weights)
        c, _ = min_norm_of_two(weights @ gram @ weights, weights @ gram @ target,
                               target @ gram @ target)
        moved = c * weights + (1 - c) * target
        if np.abs(moved - weights).sum() < MGDA_STOP:
            break
        weights = moved
    return weights


def mgda(grads):
    """The min-norm point of the convex hull of the tasks' gradients."""
    gram = (grads @ grads.T).double().numpy()
    alpha = torch.from_numpy(min_norm_weights(gram)).to(grads.dtype)
    return alpha @ grads


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = GradNormData(args.tasks, args.inputs, args.outputs,
                        torch.Generator().manual_seed(args.seed + 1))
    order_rng = random.Random(args.seed)
    shared = shared_layers(args.inputs, args.hidden)
    heads = torch.nn.ModuleList(torch.nn.Linear(args.hidden[-1], args.outputs)
                                for _ in range(args.tasks))
    shared_params = list(shared.parameters())
    shared_count = sum(p.numel() for p in shared_params)
    optimizer = torch.optim.Adam(shared_params + list(heads.parameters()), lr=args.lr)
    print(f"[torch] {args.method}: {args.tasks} tasks, {shared_count} shared parameters, "
          f"batch {args.batch}, {args.steps} steps, threads={torch.get_num_threads()}, "
          f"torch {torch.__version__}", file=sys.stderr)

    step_seconds, method_seconds = [], []
    log_every = max(1, args.steps // 10)
    for step in range(1, args.steps + 1):
        started = time.perf_counter()
        x, targets = data.rows(args.batch)
        representation = shared(x)
        losses = [F.mse_loss(head(representation), target)
                  for head, target in zip(heads, targets)]
        grads = torch.empty(args.tasks, shared_count)
        for t, (loss, head) in enumerate(zip(losses, heads)):
            head_params = list(head.parameters())
            g = torch.autograd.grad(loss, shared_params + head_params,
                                    retain_graph=t < args.tasks - 1)
            grads[t] = torch.cat([v.reshape(-1) for v in g[:len(shared_params)]])
            for p, v in zip(head_params, g[len(shared_params):]):
                p.grad = v
        method_started = time.perf_counter()
        combined = pcgrad(grads, order_rng) if args.method == "pcgrad" else mgda(grads)
        method_seconds.append(time.perf_counter() - method_started)
        for p, v in zip(shared_params, combined.split([p.numel() for p in shared_params])):
            p.grad = v.view_as(p)
        optimizer.step()
        step_seconds.append(time.perf_counter() - started)
        if step % log_every == 0 or step == args.steps:
            mean = sum(loss.item() for loss in losses) / args.tasks
            print(f"[torch] step {step:>6}  mean task loss {mean:.4f}  "
                  f"({sum(step_seconds):.1f}s)", file=sys.stderr)

    step = sum(step_seconds[args.warmup:]) / (args.steps - args.warmup)
    method = sum(method_seconds[args.warmup:]) / (args.steps - args.warmup)
    print(json.dumps({
        "impl": "pytorch",
        "method": args.method,
        "steps": args.steps,
        "batch": args.batch,
        "tasks": args.tasks,
        "threads": torch.get_num_threads(),
        "shared_params": shared_count,
        "steps_per_s": 1 / step,
        "step_ms": step * 1e3,
        "method_ms": method * 1e3,
        "final_losses": [loss.item() for loss in losses],
        "torch_version": torch.__version__,
    }))


if __name__ == "__main__":
    main()
