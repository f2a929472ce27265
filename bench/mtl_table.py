"""Every MTL weighting method on the generated shop table, with Δm% against single-task runs.

Generates the table `outerloop dataset table` writes (--rows rows, seed 0: a regression, a
3-class and a 3-label task on one shared latent) under a temporary --data-root, starts a
coordinator and --workers workers, then runs configs/mtl_table.toml:
  1. once per task with only that task: the single-task baselines (test MSE, accuracy,
     label accuracy);
  2. once per weighting method with all three tasks and the baselines as `eval.baselines`,
     so that the coordinator reports Δm% (negative: better than the single-task runs).
Prints a markdown table and writes bench/results/mtl-table.json.

Usage (from the repository root, after `make build`):
    python bench/mtl_table.py [--rows 20000] [--steps 1500] [--methods ew pcgrad] [--workers 2]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

from cluster import Cluster

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = os.path.join(ROOT, "configs", "mtl_table.toml")
METHODS = ["ew", "uw", "dwa", "gradnorm", "rlw", "pcgrad", "mgda", "cagrad", "nash_mtl",
           "imtl_g", "gradvac", "famo"]
# The spec's tasks, each as a one-task list for its single-task baseline.
TASKS = {
    "price": '[{ target = "price", loss = "mse" }]',
    "segment": '[{ target = "segment", loss = "cross_entropy" }]',
    "tags": '[{ name = "tags", targets = ["tag_a", "tag_b", "tag_c"], loss = "bce" }]',
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--methods", nargs="*", default=METHODS)
    p.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "outerloop"))
    return p.parse_args()


def main():
    args = parse_args()
    common = [f"train.steps={args.steps}", f"eval.every={args.steps}"]
    rows = []
    with tempfile.TemporaryDirectory() as data:
        subprocess.run([args.binary, "dataset", "table", "--out", os.path.join(data, "shop"),
                        "--rows", str(args.rows)], check=True, stdout=subprocess.DEVNULL)
        with Cluster(args.binary, args.workers, worker_args=["--data-root", data]) as cluster:
            baselines = {}
            for task, only in TASKS.items():
                print(f"single-task baseline {task}...", file=sys.stderr)
                status = cluster.run_finished(SPEC, common + [f"data.tasks={only}"])
                baselines[task] = status["last_eval"]["task_scores"][0]["metric"]
            table = "{ " + ", ".join(f"{t} = {b!r}" for t, b in baselines.items()) + " }"
            for method in args.methods:
                print(f"{method}...", file=sys.stderr)
                status = cluster.run_finished(
                    SPEC, common + [f'weighting.method="{method}"', f"eval.baselines={table}"])
                rows.append({
                    "method": method,
                    "delta_m_percent": status["last_eval"]["delta_m_percent"],
                    "metrics": {s["task"]: s["metric"]
                                for s in status["last_eval"]["task_scores"]},
                    "train_seconds": status["train_seconds"],
                })
    print(f"\nshop table, {args.rows} rows, {args.steps} steps of 256 rows, {args.workers} "
          f"workers; metrics on the test split")
    print("| method | Δm% | price MSE | segment accuracy | tags label accuracy | train s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    b = baselines
    print(f"| single-task runs | | {b['price']:.2f} | {b['segment']:.3f} | {b['tags']:.3f} | |")
    for r in sorted(rows, key=lambda r: r["delta_m_percent"]):
        m = r["metrics"]
        print(f"| {r['method']} | {r['delta_m_percent']:+.1f} | {m['price']:.2f} | "
              f"{m['segment']:.3f} | {m['tags']:.3f} | {r['train_seconds']:.0f} |")
    out = os.path.join(ROOT, "bench", "results", "mtl-table.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"rows": args.rows, "steps": args.steps, "workers": args.workers,
                   "baselines": baselines, "runs": rows}, f, indent=2)
    print(f"\nwritten to {os.path.relpath(out, ROOT)}")


if __name__ == "__main__":
    main()
