"""Every few-shot spec of configs/, shortened, on the project's generated datasets.

Starts a coordinator and two workers (one libtorch thread each) whose --data-root holds the
generated Omniglot-layout dataset (`omniglot`, 1623 characters) and the generated
class-folder dataset (`miniimagenet`, 100 classes of 600 84x84 RGB images), both written
once under bench/results/data. Submits every `configs/omniglot_*.toml` and
`configs/miniimagenet_*.toml` with only its length shortened (`meta.steps`, evaluation at the
end only) and everything else as shipped, waits for each, and prints the final meta-test
accuracy with its 95% CI as a markdown table (and writes bench/results/fewshot-accuracy.json).
These are short runs on a 2-core machine, not the papers' 60,000 steps: they show what each
spec reaches on the generated data after the stated number of steps.

Usage (from the repository root, after `make build`):
    python bench/fewshot_accuracy.py [--omniglot-steps 500] [--mini-steps 200] [--only omniglot_5w1s_maml]
        [--set eval.final_tasks=600]
"""
import argparse
import glob
import json
import os
import subprocess
import sys

from cluster import Cluster

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "bench", "results", "data")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--omniglot-steps", type=int, default=500)
    p.add_argument("--mini-steps", type=int, default=200)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--only", nargs="*", default=None, help="config names (without .toml) to run")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a further override for every spec (e.g. eval.final_tasks=600)")
    p.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "outerloop"))
    return p.parse_args()


def ensure_data(binary):
    for name, args in [("omniglot", []), ("miniimagenet", ["--layout", "folders"])]:
        target = os.path.join(DATA, name)
        marker = "images_evaluation" if name == "omniglot" else "test"
        if not os.path.isdir(os.path.join(target, marker)):
            print(f"generating {name} (once)...", file=sys.stderr)
            subprocess.run([binary, "dataset", "synth", "--out", target, "--force", *args],
                           check=True, stdout=subprocess.DEVNULL)


def main():
    args = parse_args()
    ensure_data(args.binary)
    configs = sorted(glob.glob(os.path.join(ROOT, "configs", "omniglot_*.toml")) +
                     glob.glob(os.path.join(ROOT, "configs", "miniimagenet_*.toml")))
    if args.only:
        configs = [c for c in configs if os.path.basename(c)[:-5] in args.only]
    rows = []
    with Cluster(args.binary, args.workers, ["--data-root", DATA]) as cluster:
        for config in configs:
            name = os.path.basename(config)[:-5]
            steps = args.omniglot_steps if name.startswith("omniglot") else args.mini_steps
            exp = cluster.submit(config, [f"meta.steps={steps}", f"eval.every={steps}",
                                          "eval.tasks=2", *args.set])
            print(f"{name}: {exp}, {steps} steps...", file=sys.stderr)
            cluster.watch(exp)
            status = cluster.status(exp)
            last = status.get("last_eval") or {}
            row = {"config": name, "steps": steps, "state": status["state"],
                   "accuracy_mean": last.get("accuracy_mean"),
                   "accuracy_ci95": last.get("accuracy_ci95"),
                   "episodes": last.get("tasks"), "train_seconds": status["train_seconds"],
                   "error": status.get("error")}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    print("\n| spec | steps | meta-test accuracy (95% CI) | episodes | meta-training time |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        acc = (f"{100 * r['accuracy_mean']:.1f}% ± {100 * r['accuracy_ci95']:.1f}%"
               if r["accuracy_mean"] is not None else r["state"])
        print(f"| `{r['config']}.toml` | {r['steps']} | {acc} | {r['episodes']} | "
              f"{r['train_seconds'] / 60:.1f} min |")
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "fewshot-accuracy.json"), "w") as f:
        json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
