"""Every MTL weighting method on a generated table, with Δm% against single-task runs.

Generates a table under a temporary --data-root (seed 0, --rows rows) and starts a coordinator
and --workers workers, then runs the table's spec:
  1. once per task with only that task: the single-task baselines (test MSE, accuracy or
     label accuracy);
  2. once per weighting method with every task and the baselines as `eval.baselines`, so
     that the coordinator reports Δm% (negative: better than the single-task runs).
The tables (--table):
  shop    `outerloop dataset table`, configs/mtl_table.toml: a regression, a 3-class and a
          3-label task on one shared latent, an MLP;
  shapes  `outerloop dataset shapes`, configs/mtl_shapes_conv4.toml: noisy 16x16 pictures, the
          shape's class, size and position, conv4 shared layers.
Prints a markdown table and writes bench/results/mtl-<table>.json.

Usage (from the repository root, after `make build`):
    python bench/mtl_table.py [--table shop] [--rows 20000] [--steps 1500] [--methods ew pcgrad]
                              [--workers 2]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

from cluster import Cluster

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ["ew", "uw", "dwa", "gradnorm", "rlw", "pcgrad", "mgda", "cagrad", "nash_mtl",
           "imtl_g", "gradvac", "famo"]
# Per table: its generator, its spec, and each task as a one-task list for its single-task
# baseline, with the metric's name.
TABLES = {
    "shop": {
        "generate": "table",
        "spec": "mtl_table.toml",
        "rows": 20000,
        "steps": 1500,
        "tasks": {
            "price": ('[{ target = "price", loss = "mse" }]', "MSE"),
            "segment": ('[{ target = "segment", loss = "cross_entropy" }]', "accuracy"),
            "tags": ('[{ name = "tags", targets = ["tag_a", "tag_b", "tag_c"], loss = "bce" }]',
                     "label accuracy"),
        },
    },
    "shapes": {
        "generate": "shapes",
        "spec": "mtl_shapes_conv4.toml",
        "rows": 4000,
        "steps": 600,
        "tasks": {
            "shape": ('[{ target = "shape", loss = "cross_entropy" }]', "accuracy"),
            "size": ('[{ target = "size", loss = "mse" }]', "MSE"),
            "position": ('[{ name = "position", targets = ["x", "y"], loss = "mse" }]', "MSE"),
        },
    },
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--table", choices=sorted(TABLES), default="shop")
    p.add_argument("--rows", type=int, help="default: the table's (shop 20000, shapes 4000)")
    p.add_argument("--steps", type=int, help="default: the table's (shop 1500, shapes 600)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--methods", nargs="*", default=METHODS)
    p.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "outerloop"))
    args = p.parse_args()
    table = TABLES[args.table]
    args.rows = args.rows or table["rows"]
    args.steps = args.steps or table["steps"]
    return args


def main():
    args = parse_args()
    table = TABLES[args.table]
    spec = os.path.join(ROOT, "configs", table["spec"])
    common = [f"train.steps={args.steps}", f"eval.every={args.steps}"]
    rows = []
    with tempfile.TemporaryDirectory() as data:
        subprocess.run([args.binary, "dataset", table["generate"], "--out",
                        os.path.join(data, args.table), "--rows", str(args.rows)], check=True,
                       stdout=subprocess.DEVNULL)
        with Cluster(args.binary, args.workers, worker_args=["--data-root", data]) as cluster:
            baselines = {}
            for task, (only, _) in table["tasks"].items():
                print(f"single-task baseline {task}...", file=sys.stderr)
                status = cluster.run_finished(spec, common + [f"data.tasks={only}"])
                baselines[task] = status["last_eval"]["task_scores"][0]["metric"]
            given = "{ " + ", ".join(f"{t} = {b!r}" for t, b in baselines.items()) + " }"
            for method in args.methods:
                print(f"{method}...", file=sys.stderr)
                status = cluster.run_finished(
                    spec, common + [f'weighting.method="{method}"', f"eval.baselines={given}"])
                rows.append({
                    "method": method,
                    "delta_m_percent": status["last_eval"]["delta_m_percent"],
                    "metrics": {s["task"]: s["metric"]
                                for s in status["last_eval"]["task_scores"]},
                    "train_seconds": status["train_seconds"],
                })
    tasks = table["tasks"]
    print(f"\n{args.table} table, {args.rows} rows, {args.steps} steps, {args.workers} "
          f"workers; metrics on the test split")
    print("| method | Δm% | " + " | ".join(f"{t} {m}" for t, (_, m) in tasks.items())
          + " | train s |")
    print("| --- | ---: | " + " | ".join("---:" for _ in tasks) + " | ---: |")
    cell = lambda task, value: f"{value:.3g}" if tasks[task][1] == "MSE" else f"{value:.3f}"
    print("| single-task runs | | " + " | ".join(cell(t, baselines[t]) for t in tasks) + " | |")
    for r in sorted(rows, key=lambda r: r["delta_m_percent"]):
        print(f"| {r['method']} | {r['delta_m_percent']:+.1f} | "
              + " | ".join(cell(t, r["metrics"][t]) for t in tasks)
              + f" | {r['train_seconds']:.0f} |")
    out = os.path.join(ROOT, "bench", "results", f"mtl-{args.table}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"table": args.table, "rows": args.rows, "steps": args.steps,
                   "workers": args.workers, "baselines": baselines, "runs": rows}, f, indent=2)
    print(f"\nwritten to {os.path.relpath(out, ROOT)}")


if __name__ == "__main__":
    main()
