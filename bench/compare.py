"""outerloop against the plain-PyTorch reference on the MAML sinusoid benchmark.

Runs, on this machine and in this one invocation:
  1. bench/maml_sinusoid_torch.py (plain PyTorch, per-task loop, one thread);
  2. outerloop: a coordinator and one worker process with one libtorch thread;
  3. outerloop with two worker processes (unless --skip-two-workers), to show how an outer
     step splits into worker compute and everything else (RPC, aggregation, the update).
Each runs configs/sinusoid_maml.toml's settings for --steps meta-steps and is evaluated on
--eval-tasks held-out tasks. Prints tasks/s, their ratio, and post-adaptation MSE (95% CI),
and writes the figures to bench/results/compare-<steps>.json.

Usage (from the repository root, after `make build`):
    python bench/compare.py --steps 3000
"""
import argparse
import json
import os
import subprocess
import sys
import time

from cluster import Cluster, step_split

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = os.path.join(ROOT, "configs", "sinusoid_maml.toml")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--eval-tasks", type=int, default=2000)
    p.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "outerloop"))
    p.add_argument("--skip-two-workers", action="store_true")
    p.add_argument("--skip-reference", action="store_true", help="only run outerloop")
    args = p.parse_args()
    if args.steps < 1 or args.eval_tasks < 2:
        p.error("--steps must be at least 1 and --eval-tasks at least 2")
    return args


def run_reference(args):
    cmd = [sys.executable, os.path.join(ROOT, "bench", "maml_sinusoid_torch.py"),
           "--steps", str(args.steps), "--eval-tasks", str(args.eval_tasks), "--threads", "1"]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_outerloop(args, workers, chunk_tasks):
    """Coordinator + `workers` worker processes on loopback; returns status and step timings."""
    overrides = [f"meta.steps={args.steps}", f"meta.chunk_tasks={chunk_tasks}",
                 f"eval.every={args.steps}", "eval.tasks=100",
                 f"eval.final_tasks={args.eval_tasks}"]
    with Cluster(args.binary, workers) as cluster:
        exp = cluster.submit(SPEC, overrides)
        started = time.perf_counter()
        cluster.watch(exp)
        wall = time.perf_counter() - started
        status, metrics = cluster.status(exp), cluster.metrics(exp)
    step, critical = step_split(metrics, skip=10)
    return {
        "impl": f"outerloop ({workers} worker{'s' if workers > 1 else ''})",
        "workers": workers,
        "chunk_tasks": chunk_tasks,
        "tasks_per_s": status["tasks_per_s"],
        "train_seconds": status["train_seconds"],
        "wall_seconds": wall,
        "eval_tasks": status["last_eval"]["tasks"],
        "eval_loss_mean": status["last_eval"]["loss_mean"],
        "eval_loss_ci95": status["last_eval"]["loss_ci95"],
        "eval_loss_before_mean": status["last_eval"]["loss_before_mean"],
        "step_ms": step * 1e3,
        "worker_compute_ms": critical * 1e3,
        "other_ms": (step - critical) * 1e3,
    }


def main():
    args = parse_args()
    rows = []
    if not args.skip_reference:
        print(f"running the plain-PyTorch reference for {args.steps} steps...", file=sys.stderr)
        ref = run_reference(args)
        ref["impl"] = "pytorch reference (per-task loop)"
        rows.append(ref)
    print(f"running outerloop, 1 worker, for {args.steps} steps...", file=sys.stderr)
    rows.append(run_outerloop(args, workers=1, chunk_tasks=25))
    if not args.skip_two_workers:
        print(f"running outerloop, 2 workers, for {args.steps} steps...", file=sys.stderr)
        rows.append(run_outerloop(args, workers=2, chunk_tasks=13))

    base = rows[0]["tasks_per_s"] if not args.skip_reference else None
    print(f"\nMAML sinusoid, {args.steps} steps x 25 tasks, 1 libtorch thread per process, "
          f"post-adaptation MSE on {args.eval_tasks} held-out tasks")
    print(f"{'implementation':<36} {'tasks/s':>9} {'ratio':>7} {'train s':>8}  {'MSE (95% CI)':<18} {'step ms':>8} {'compute':>8} {'other':>7}")
    for r in rows:
        ratio = f"{r['tasks_per_s'] / base:.1f}x" if base else "-"
        mse = f"{r['eval_loss_mean']:.3f} ± {r['eval_loss_ci95']:.3f}"
        split = (f"{r['step_ms']:>8.3f} {r['worker_compute_ms']:>8.3f} {r['other_ms']:>7.3f}"
                 if "step_ms" in r else f"{'':>8} {'':>8} {'':>7}")
        print(f"{r['impl']:<36} {r['tasks_per_s']:>9.0f} {ratio:>7} {r['train_seconds']:>8.1f}  {mse:<18} {split}")
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    out = os.path.join(ROOT, "bench", "results", f"compare-{args.steps}.json")
    with open(out, "w") as f:
        json.dump({"steps": args.steps, "eval_tasks": args.eval_tasks, "rows": rows}, f, indent=2)
    print(f"\nwritten to {os.path.relpath(out, ROOT)}")


if __name__ == "__main__":
    main()
