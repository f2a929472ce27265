"""Every MTL weighting method on GradNorm's regression family, with Δm% against single-task runs.

Starts a coordinator and --workers workers (one libtorch thread each), then runs
configs/mtl_gradnorm.toml (ten tasks, y_i = sigma_i * tanh((B + eps_i) x), sigma_i from 1 to
100; four shared ReLU layers of 100 units; Adam 0.001; --steps steps of 100 rows):
  1. once per task with only that task (`data.tasks=[i]`): the single-task baselines, each
     task's test MSE when it has the network to itself;
  2. once per weighting method, with every task, the baselines passed as `eval.baselines`,
     so that the coordinator reports Δm% (negative: better than the single-task runs).
Prints a markdown table (Δm%, each task's test MSE relative to its baseline for the
smallest- and largest-scale tasks, training time) and writes bench/results/mtl-gradnorm.json.

Usage (from the repository root, after `make build`):
    python bench/mtl_gradnorm.py [--steps 3000] [--methods ew pcgrad] [--workers 2]
"""
import argparse
import json
import os
import sys

from cluster import Cluster

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = os.path.join(ROOT, "configs", "mtl_gradnorm.toml")
METHODS = ["ew", "uw", "dwa", "gradnorm", "rlw", "pcgrad", "mgda", "cagrad", "nash_mtl",
           "imtl_g", "gradvac", "famo"]
TASKS = 10


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--methods", nargs="*", default=METHODS)
    p.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "outerloop"))
    return p.parse_args()


def final_scores(status):
    return [s["metric"] for s in status["last_eval"]["task_scores"]]


def main():
    args = parse_args()
    common = [f"train.steps={args.steps}", f"eval.every={args.steps}"]
    rows = []
    with Cluster(args.binary, args.workers) as cluster:
        baselines = []
        for task in range(TASKS):
            print(f"single-task baseline t{task}...", file=sys.stderr)
            status = cluster.run_finished(SPEC, common + [f"data.tasks=[{task}]"])
            baselines.append(final_scores(status)[0])
        table = "{ " + ", ".join(f"t{i} = {b!r}" for i, b in enumerate(baselines)) + " }"
        for method in args.methods:
            print(f"{method}...", file=sys.stderr)
            status = cluster.run_finished(
                SPEC, common + [f'weighting.method="{method}"', f"eval.baselines={table}"])
            scores = final_scores(status)
            rows.append({
                "method": method,
                "delta_m_percent": status["last_eval"]["delta_m_percent"],
                "test_mse": scores,
                "relative": [s / b for s, b in zip(scores, baselines)],
                "train_seconds": status["train_seconds"],
            })
    print(f"\nGradNorm regression, {TASKS} tasks, {args.steps} steps of 100 rows, "
          f"{args.workers} workers; test MSE on 10,000 held-out rows")
    print("| method | Δm% | σ=1 task vs single-task | σ=100 task vs single-task | train s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in sorted(rows, key=lambda r: r["delta_m_percent"]):
        print(f"| {r['method']} | {r['delta_m_percent']:+.1f} | {r['relative'][0]:.2f}x | "
              f"{r['relative'][-1]:.2f}x | {r['train_seconds']:.0f} |")
    out = os.path.join(ROOT, "bench", "results", "mtl-gradnorm.json")
    with open(out, "w") as f:
        json.dump({"steps": args.steps, "workers": args.workers, "baselines": baselines,
                   "rows": rows}, f, indent=2)
    print(f"\nwritten to {os.path.relpath(out, ROOT)}")


if __name__ == "__main__":
    main()
