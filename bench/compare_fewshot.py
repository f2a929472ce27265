"""outerloop against the plain-PyTorch reference on conv4 few-shot MAML (Omniglot 5-way 1-shot).

Runs, on this machine and in this one invocation, on the project's generated Omniglot-layout
dataset (written once to bench/results/data/omniglot with `outerloop dataset synth`):
  1. a large matrix multiply on one core (torch, one thread): the GFLOP/s limit of the core;
     then two of them at once in two processes: the machine's ceiling for two workers;
  2. bench/maml_conv4_torch.py: the same workload written the usual way (per-task Python loop,
     torch.autograd.grad(create_graph=True)), one thread, with its FLOPs per episode counted;
  3. outerloop: a coordinator and one worker process (one libtorch thread);
  4. outerloop with two worker processes (unless --skip-two-workers).
The workload is configs/omniglot_5w1s_maml.toml's: conv4 with 64 filters on 28x28 images,
second-order MAML with one inner step (lr 0.4), meta-batch 32, one query per class, Adam
0.001, run for --steps meta-steps; both are then evaluated on --eval-episodes held-out
episodes adapted with 3 inner steps. Prints episodes/s, ratios, achieved GFLOP/s beside the
matrix multiply's, accuracy with its 95% CI, and where an outerloop step's time goes; writes
the figures to bench/results/fewshot-<steps>.json.

Usage (from the repository root, after `make build`):
    python bench/compare_fewshot.py --steps 300
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch

from cluster import Cluster, step_split

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = os.path.join(ROOT, "configs", "omniglot_5w1s_maml.toml")
DATA = os.path.join(ROOT, "bench", "results", "data")
EVAL_INNER_STEPS = 3
META_BATCH = 32


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--eval-episodes", type=int, default=600)
    p.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "outerloop"))
    p.add_argument("--chunk-tasks", type=int, default=8,
                   help="outerloop's meta.chunk_tasks: tasks per work chunk (meta-batch 32)")
    p.add_argument("--skip-two-workers", action="store_true")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--device", default="cpu", help="outerloop workers' --device (cpu, cuda:0)")
    args = p.parse_args()
    if args.steps < 2 or args.eval_episodes < 2:
        p.error("--steps and --eval-episodes must be at least 2")
    return args


def ensure_data(binary):
    """The default-sized synthetic Omniglot (1623 characters x 20 drawers), generated once."""
    target = os.path.join(DATA, "omniglot")
    if not os.path.isdir(os.path.join(target, "images_evaluation")):
        print("generating the synthetic Omniglot-layout dataset (once)...", file=sys.stderr)
        subprocess.run([binary, "dataset", "synth", "--out", target, "--force"], check=True,
                       stdout=subprocess.DEVNULL)
    return DATA


def matmul_gflops(size=2048, reps=5):
    """GFLOP/s of a float32 size x size matrix multiply on one thread."""
    torch.set_num_threads(1)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


MATMUL_PROCESS = """
import sys, time, torch
torch.set_num_threads(1)
a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
a @ b
times = []
for _ in range(12):
    start = time.perf_counter()
    a @ b
    times.append(time.perf_counter() - start)
print(2 * 2048 ** 3 / sorted(times)[len(times) // 2] / 1e9)
"""


def concurrent_matmul_scaling(processes=2):
    """How much `processes` one-thread matrix multiplies running at once get done, against one
    alone: the machine's own ceiling for `processes` workers (cores sharing caches, memory
    bandwidth or a host's hyper-threads give less than `processes`x)."""
    def run(n):
        procs = [subprocess.Popen([sys.executable, "-c", MATMUL_PROCESS], stdout=subprocess.PIPE,
                                  text=True) for _ in range(n)]
        return sum(float(p.communicate()[0]) for p in procs)
    return run(processes) / run(1)


def run_reference(args, data_root):
    cmd = [sys.executable, os.path.join(ROOT, "bench", "maml_conv4_torch.py"),
           "--data-root", data_root, "--steps", str(args.steps), "--threads", "1",
           "--eval-episodes", str(args.eval_episodes),
           "--eval-inner-steps", str(EVAL_INNER_STEPS), "--count-flops"]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_outerloop(args, data_root, workers, chunk_tasks):
    """Coordinator + `workers` worker processes on loopback; returns status and step timings."""
    overrides = [f"meta.steps={args.steps}", f"meta.chunk_tasks={chunk_tasks}",
                 f"eval.every={args.steps}", "eval.tasks=2",
                 f"eval.final_tasks={args.eval_episodes}",
                 f"eval.inner_steps={EVAL_INNER_STEPS}"]
    with Cluster(args.binary, workers, ["--data-root", data_root], args.device) as cluster:
        exp = cluster.submit(SPEC, overrides)
        cluster.watch(exp)
        status, metrics = cluster.status(exp), cluster.metrics(exp)
    # Steady state: the first steps decode every image once.
    step, critical = step_split(metrics, skip=2)
    return {
        "impl": f"outerloop ({workers} worker{'s' if workers > 1 else ''})",
        "workers": workers,
        "chunk_tasks": chunk_tasks,
        "episodes_per_s": META_BATCH / step,
        "train_seconds": status["train_seconds"],
        "eval_episodes": status["last_eval"]["tasks"],
        "eval_accuracy_mean": status["last_eval"]["accuracy_mean"],
        "eval_accuracy_ci95": status["last_eval"]["accuracy_ci95"],
        "step_ms": step * 1e3,
        "worker_compute_ms": critical * 1e3,
        "other_ms": (step - critical) * 1e3,
    }


def main():
    args = parse_args()
    data_root = ensure_data(args.binary)
    limit = matmul_gflops()
    print(f"2048x2048 float32 matrix multiply, one thread: {limit:.1f} GFLOP/s", file=sys.stderr)
    matmul_scaling = concurrent_matmul_scaling()
    print(f"two at once, in two processes: {matmul_scaling:.2f}x one", file=sys.stderr)
    rows, flops = [], None
    if not args.skip_reference:
        print(f"running the plain-PyTorch reference for {args.steps} steps...", file=sys.stderr)
        ref = run_reference(args, data_root)
        ref["impl"] = "pytorch reference (per-task loop)"
        flops = ref.get("flops_per_episode")
        rows.append(ref)
    print(f"running outerloop, 1 worker, for {args.steps} steps...", file=sys.stderr)
    rows.append(run_outerloop(args, data_root, 1, args.chunk_tasks))
    if not args.skip_two_workers:
        print(f"running outerloop, 2 workers, for {args.steps} steps...", file=sys.stderr)
        rows.append(run_outerloop(args, data_root, 2, args.chunk_tasks))

    base = rows[0]["episodes_per_s"] if not args.skip_reference else None
    print(f"\nconv4 MAML (second order, 1 inner step), Omniglot-layout synthetic data, 5-way "
          f"1-shot, meta-batch 32, {args.steps} steps, 1 libtorch thread per process; "
          f"accuracy on {args.eval_episodes} held-out episodes after {EVAL_INNER_STEPS} inner steps")
    print(f"{'implementation':<36} {'episodes/s':>10} {'ratio':>7} {'GFLOP/s':>8}  "
          f"{'accuracy (95% CI)':<18} {'step ms':>8} {'compute':>8} {'other':>7}")
    for r in rows:
        ratio = f"{r['episodes_per_s'] / base:.2f}x" if base else "-"
        gflops = f"{r['episodes_per_s'] * flops / 1e9:.1f}" if flops else "-"
        r["gflops"] = r["episodes_per_s"] * flops / 1e9 if flops else None
        acc = f"{100 * r['eval_accuracy_mean']:.1f}% ± {100 * r['eval_accuracy_ci95']:.1f}%"
        split = (f"{r['step_ms']:>8.1f} {r['worker_compute_ms']:>8.1f} {r['other_ms']:>7.1f}"
                 if "step_ms" in r else f"{'':>8} {'':>8} {'':>7}")
        print(f"{r['impl']:<36} {r['episodes_per_s']:>10.1f} {ratio:>7} {gflops:>8}  {acc:<18} {split}")
    print(f"{'one-core matrix multiply (the limit)':<36} {'':>10} {'':>7} {limit:>8.1f}")
    if len(rows) >= 2 and not args.skip_two_workers:
        one, two = rows[-2], rows[-1]
        print(f"\n2 workers / 1 worker: {two['episodes_per_s'] / one['episodes_per_s']:.2f}x "
              f"(two one-thread matrix multiplies at once: {matmul_scaling:.2f}x one)")
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    out = os.path.join(ROOT, "bench", "results", f"fewshot-{args.steps}.json")
    with open(out, "w") as f:
        json.dump({"steps": args.steps, "eval_episodes": args.eval_episodes,
                   "matmul_gflops": limit, "matmul_two_process_scaling": matmul_scaling,
                   "flops_per_episode": flops, "rows": rows}, f, indent=2)
    print(f"\nwritten to {os.path.relpath(out, ROOT)}")


if __name__ == "__main__":
    main()
