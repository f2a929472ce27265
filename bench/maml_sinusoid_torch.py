"""Plain-PyTorch reference: MAML on sinusoid regression (Finn et al., 2017).

This is the baseline that outerloop's Rust implementation is benchmarked
against. It is written the way MAML is usually written by hand (and the way
learn2learn does it internally): a Python loop over the tasks of a meta-batch,
a functional forward pass over explicit parameter tensors, and
`torch.autograd.grad(..., create_graph=True)` for the inner SGD step(s) so the
meta-gradient is second order. `--first-order` gives FOMAML instead.

Task family: y = A * sin(x - phi), A ~ U[0.1, 5], phi ~ U[0, pi], x ~ U[-5, 5];
K support and Q query points per task, drawn independently. Model: MLP
1 -> 40 -> 40 -> 1 with ReLU and nn.Linear's default init.

Usage:
    python bench/maml_sinusoid_torch.py [--steps 70000] [--threads 1] [--save p.safetensors]

Progress goes to stderr; the last line of stdout is one JSON object with the
timing (training loop only, data generation included) and evaluation figures.
"""
import argparse
import json
import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=70000)
    p.add_argument("--meta-batch", type=int, default=25)
    p.add_argument("--shots", type=int, default=10)
    p.add_argument("--queries", type=int, default=10)
    p.add_argument("--hidden", type=str, default="40,40")
    p.add_argument("--inner-steps", type=int, default=1)
    p.add_argument("--inner-lr", type=float, default=0.01)
    p.add_argument("--meta-lr", type=float, default=0.001)
    p.add_argument("--first-order", action="store_true")
    p.add_argument("--eval-tasks", type=int, default=10000)
    p.add_argument("--eval-inner-steps", type=int, default=None,
                   help="inner steps at evaluation (default: --inner-steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save", type=str, default=None, help="safetensors path for final parameters")
    return p.parse_args()


def init_params(hidden):
    """Parameters of nn.Sequential(Linear, ReLU, Linear, ReLU, Linear), default init.

    Building the real module gives PyTorch's exact default initialisation and the
    usual state_dict names; after that only the raw tensors are used.
    """
    sizes = [1] + hidden + [1]
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*layers)
    names = [n for n, _ in net.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in net.parameters()]
    return names, params


def forward(params, x):
    """Functional MLP forward: params = [W0, b0, W1, b1, ...]."""
    n_layers = len(params) // 2
    for i in range(n_layers):
        x = F.linear(x, params[2 * i], params[2 * i + 1])
        if i < n_layers - 1:
            x = F.relu(x)
    return x


def adapt(params, xs, ys, steps, lr, create_graph):
    """Inner loop: `steps` plain SGD steps on the support MSE.

    With create_graph=True the update stays in the graph, so backpropagating the
    query loss through it yields the second-order MAML gradient. With False the
    inner gradients come back detached, which is exactly first-order MAML.
    """
    fast = params
    for _ in range(steps):
        loss = F.mse_loss(forward(fast, xs), ys)
        grads = torch.autograd.grad(loss, fast, create_graph=create_graph)
        fast = [w - lr * g for w, g in zip(fast, grads)]
    return fast


def sample_tasks(rng, n, shots, queries):
    """n sinusoid tasks as float32 tensors: xs (n,K,1), ys (n,K,1), xq (n,Q,1), yq (n,Q,1)."""
    amp = rng.uniform(0.1, 5.0, size=(n, 1, 1))
    phase = rng.uniform(0.0, math.pi, size=(n, 1, 1))
    x = rng.uniform(-5.0, 5.0, size=(n, shots + queries, 1))
    y = amp * np.sin(x - phase)
    x = torch.from_numpy(x.astype(np.float32))
    y = torch.from_numpy(y.astype(np.float32))
    return x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:]


def evaluate(params, rng, args):
    """Mean (and 95% CI) post-adaptation query MSE and mean pre-adaptation MSE."""
    steps = args.inner_steps if args.eval_inner_steps is None else args.eval_inner_steps
    xs, ys, xq, yq = sample_tasks(rng, args.eval_tasks, args.shots, args.queries)
    after, before = [], []
    for t in range(args.eval_tasks):
        fast = adapt(params, xs[t], ys[t], steps, args.inner_lr, create_graph=False)
        with torch.no_grad():
            before.append(F.mse_loss(forward(params, xq[t]), yq[t]).item())
            after.append(F.mse_loss(forward(fast, xq[t]), yq[t]).item())
    after = np.array(after)
    ci95 = 1.96 * after.std(ddof=1) / math.sqrt(len(after)) if len(after) > 1 else float("nan")
    return float(after.mean()), float(ci95), float(np.mean(before))


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    # Independent streams so the held-out tasks never overlap the training stream.
    train_ss, eval_ss = np.random.SeedSequence(args.seed).spawn(2)
    train_rng, eval_rng = np.random.default_rng(train_ss), np.random.default_rng(eval_ss)

    hidden = [int(h) for h in args.hidden.split(",") if h]
    names, params = init_params(hidden)
    opt = torch.optim.Adam(params, lr=args.meta_lr)
    create_graph = not args.first_order
    algorithm = "fomaml" if args.first_order else "maml"
    log_every = max(1, args.steps // 10)
    print(f"[torch] {algorithm}: steps={args.steps} meta_batch={args.meta_batch} "
          f"threads={torch.get_num_threads()} torch={torch.__version__}", file=sys.stderr)

    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        xs, ys, xq, yq = sample_tasks(train_rng, args.meta_batch, args.shots, args.queries)
        opt.zero_grad(set_to_none=True)
        meta_loss = 0.0
        for t in range(args.meta_batch):
            fast = adapt(params, xs[t], ys[t], args.inner_steps, args.inner_lr, create_graph)
            meta_loss = meta_loss + F.mse_loss(forward(fast, xq[t]), yq[t])
        meta_loss = meta_loss / args.meta_batch
        meta_loss.backward()
        opt.step()
        # .item() forces a sync/readout, so only do it when logging.
        if step % log_every == 0 or step == args.steps:
            print(f"[torch] step {step:>7}  meta-loss {meta_loss.item():.4f}  "
                  f"({time.perf_counter() - t0:.1f}s)", file=sys.stderr)
    train_seconds = time.perf_counter() - t0

    eval_mean, eval_ci, eval_before = evaluate(params, eval_rng, args)
    print(f"[torch] eval on {args.eval_tasks} tasks: post-adapt MSE {eval_mean:.4f} "
          f"+/- {eval_ci:.4f}, pre-adapt MSE {eval_before:.4f}", file=sys.stderr)

    if args.save:
        from safetensors.torch import save_file
        save_file({n: p.detach().contiguous() for n, p in zip(names, params)}, args.save)

    print(json.dumps({
        "impl": "pytorch",
        "algorithm": algorithm,
        "steps": args.steps,
        "meta_batch": args.meta_batch,
        "threads": torch.get_num_threads(),
        "train_seconds": train_seconds,
        "tasks_per_s": args.steps * args.meta_batch / train_seconds,
        "eval_tasks": args.eval_tasks,
        "eval_loss_mean": eval_mean,
        "eval_loss_ci95": eval_ci,
        "eval_loss_before_mean": eval_before,
        "torch_version": torch.__version__,
    }))


if __name__ == "__main__":
    main()
