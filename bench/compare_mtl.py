"""outerloop against the plain-PyTorch reference on one multi-task step (PCGrad and MGDA).

Runs, on this machine and in this one invocation:
  1. two one-thread matrix multiplies at once in two processes, against one alone: the
     machine's ceiling for two workers;
  2. for each method (pcgrad, mgda):
     a. bench/mtl_torch.py: the workload written the usual way (one backward per task for each
        task's gradient of the shared layers, then the method), one thread;
     b. outerloop: a coordinator and one worker process (one libtorch thread);
     c. outerloop with two worker processes (unless --skip-two-workers);
     each of b and c with the shared layers' gradients factored (what `auto` picks here:
     each layer's input rows and every task's gradient at its outputs go to the coordinator)
     and dense (every task's whole gradient), as --forms says.
The workload is configs/mtl_gradnorm.toml's with larger shared layers: GradNorm's regression
data with 10 tasks (250 inputs, 100 outputs each), shared layers 250 -> 1000 -> 750 with ReLU
(about 1M parameters), one Linear head per task, MSE, 100 fresh rows per step, Adam 0.001,
for --steps steps. outerloop cuts each step's rows into chunks of 50 (one per worker with two
workers). With --repeat N every configuration runs N times, the configurations taking turns
(the reference, one worker, two workers, then again), so that a machine whose speed drifts
over minutes slows all of them alike; each figure is then the median of its N runs, and the
table adds the range of steps/s. Prints steps/s (the first steps left out as warm-up), the
ratio against the reference, the step's time, the slowest worker's compute time in it, the round (chunks leased
until the last result is in), the reduction of the results, and the time in the weighting
method with its share of the step; then 2 workers against 1 beside the matrix
multiplies' scaling. Targets: the method under 10% of the step, 1 worker at least as fast as
the reference, 2 workers at least 1.7x one. Writes the figures to bench/results/mtl-<steps>.json.

Usage (from the repository root, after `make build`):
    python bench/compare_mtl.py --steps 200
    python bench/compare_mtl.py --steps 100 --repeat 3 --forms factored
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

from cluster import Cluster, step_split, train_mean
from compare_fewshot import concurrent_matmul_scaling

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = os.path.join(ROOT, "configs", "mtl_gradnorm.toml")
METHODS = ("pcgrad", "mgda")
FORMS = ("factored", "dense")
INPUTS = 250  # configs/mtl_gradnorm.toml's data.inputs
HIDDEN = [1000, 750]
BATCH = 100
CHUNK_ROWS = 50
# Steps left out of the means: the first ones allocate and fill caches.
WARMUP = 5


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "outerloop"))
    p.add_argument("--methods", default=",".join(METHODS),
                   help="comma-separated, from " + ", ".join(METHODS))
    p.add_argument("--forms", default=",".join(FORMS),
                   help="train.shared_gradients to run, comma-separated, from "
                        + ", ".join(FORMS))
    p.add_argument("--batch", type=int, default=BATCH, help="rows per step")
    p.add_argument("--chunk-rows", type=int, default=CHUNK_ROWS,
                   help="rows per chunk (train.chunk_rows)")
    p.add_argument("--skip-two-workers", action="store_true")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs of every configuration, taking turns; figures are medians")
    p.add_argument("--coordinator-arg", action="append", default=[], metavar="ARG",
                   help="an extra argument for `outerloop coordinator` (repeatable), e.g. "
                        "--coordinator-arg=--runtime-threads=2")
    args = p.parse_args()
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    args.methods = [m for m in args.methods.split(",") if m]
    if not args.methods or any(m not in METHODS for m in args.methods):
        p.error(f"--methods takes a comma-separated list from {', '.join(METHODS)}")
    args.forms = [f for f in args.forms.split(",") if f]
    if not args.forms or any(f not in FORMS for f in args.forms):
        p.error(f"--forms takes a comma-separated list from {', '.join(FORMS)}")
    if args.steps <= WARMUP:
        p.error(f"--steps must be above the {WARMUP} warm-up steps")
    return args


def run_reference(args, method):
    cmd = [sys.executable, os.path.join(ROOT, "bench", "mtl_torch.py"), "--method", method,
           "--steps", str(args.steps), "--warmup", str(WARMUP), "--batch", str(args.batch),
           "--hidden", ",".join(map(str, HIDDEN)), "--threads", "1"]
    out = json.loads(subprocess.run(cmd, check=True, stdout=subprocess.PIPE,
                                    text=True).stdout.strip().splitlines()[-1])
    return {
        "impl": "pytorch reference (per-task backward)",
        "method": method,
        "workers": None,
        "steps_per_s": out["steps_per_s"],
        "step_ms": out["step_ms"],
        "worker_compute_ms": None,
        "round_ms": None,
        "reduce_ms": None,
        "weighting_ms": out["method_ms"],
        "weighting_share": out["method_ms"] / out["step_ms"],
        "final_losses": out["final_losses"],
    }


def run_outerloop(args, method, workers, form):
    """Coordinator + `workers` worker processes on loopback; returns the step's timings."""
    overrides = [f'weighting.method="{method}"', f"model.hidden={HIDDEN}",
                 f'train.shared_gradients="{form}"',
                 f"train.steps={args.steps}", f"train.batch={args.batch}",
                 f"train.chunk_rows={args.chunk_rows}", f"eval.every={args.steps}",
                 f"eval.rows={args.batch}", f"eval.final_rows={args.batch}"]
    with Cluster(args.binary, workers, coordinator_args=args.coordinator_arg) as cluster:
        exp = cluster.submit(SPEC, overrides)
        cluster.watch(exp)
        status, metrics = cluster.status(exp), cluster.metrics(exp)
    if status["state"] != "finished":
        raise SystemExit(f"outerloop ({method}, {workers} workers) ended {status['state']}: "
                         f"{status.get('error')}")
    step, critical = step_split(metrics, WARMUP)
    weighting = train_mean(metrics, "weighting_seconds", WARMUP)
    round_, reduce = (train_mean(metrics, k, WARMUP) for k in ("round_seconds", "reduce_seconds"))
    last = [m for m in metrics if m["kind"] == "train"][-1]
    return {
        "impl": f"outerloop ({workers} worker{'s' if workers > 1 else ''}, {form})",
        "method": method,
        "workers": workers,
        "form": form,
        "workers_used": train_mean(metrics, "workers", WARMUP),
        "steps_per_s": 1 / step,
        "step_ms": step * 1e3,
        "worker_compute_ms": critical * 1e3,
        "round_ms": round_ * 1e3,
        "reduce_ms": reduce * 1e3,
        "weighting_ms": weighting * 1e3,
        "weighting_share": weighting / step,
        "final_losses": last["task_losses"],
    }


def configurations(args):
    """(label, run) for every configuration, in the order they take turns."""
    configs = []
    for method in args.methods:
        if not args.skip_reference:
            configs.append((f"{method}: the plain-PyTorch reference",
                            lambda m=method: run_reference(args, m)))
        for form in args.forms:
            for workers in (1,) if args.skip_two_workers else (1, 2):
                configs.append((f"{method}: outerloop, {workers} worker(s), {form}",
                                lambda m=method, w=workers, f=form: run_outerloop(args, m, w, f)))
    return configs


def median_row(runs):
    """One row from a configuration's runs: the median of every figure, and the runs' range
    of steps/s."""
    row = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "workers":
            row[key] = statistics.median(r[key] for r in runs)
    row["steps_per_s_range"] = (min(r["steps_per_s"] for r in runs),
                                max(r["steps_per_s"] for r in runs))
    row["final_losses"] = runs[-1]["final_losses"]
    return row


def main():
    args = parse_args()
    configs = configurations(args)
    runs = [[] for _ in configs]
    scalings = []
    for rep in range(args.repeat):
        scalings.append(concurrent_matmul_scaling())
        print(f"two one-thread matrix multiplies at once, in two processes: {scalings[-1]:.2f}x "
              "one", file=sys.stderr)
        for (label, run), done in zip(configs, runs):
            print(f"{label}, {args.steps} steps (run {rep + 1} of {args.repeat})...",
                  file=sys.stderr)
            done.append(run())
    matmul_scaling = statistics.median(scalings)
    rows = [median_row(r) for r in runs]

    widths = [INPUTS] + HIDDEN
    shared = sum((a + 1) * b for a, b in zip(widths, HIDDEN))
    print(f"\nMTL step: GradNorm regression, 10 tasks, shared layers "
          f"{'-'.join(map(str, widths))} ({shared / 1e6:.2f}M parameters), batch {args.batch}, "
          f"{args.steps} steps (first {WARMUP} left out), 1 libtorch thread per process")
    if args.repeat > 1:
        print(f"medians of {args.repeat} runs each, the configurations taking turns; range: the "
              "runs' lowest and highest steps/s")
    print(f"{'method':<7} {'implementation':<38} {'steps/s':>8} {'ratio':>6} {'step ms':>8} "
          f"{'compute':>8} {'round':>6} {'reduce':>6} {'weighting ms':>12} {'share':>6}"
          + (f" {'range':>13}" if args.repeat > 1 else ""))
    for method in args.methods:
        mine = [r for r in rows if r["method"] == method]
        base = None if args.skip_reference else mine[0]["steps_per_s"]
        for r in mine:
            ratio = f"{r['steps_per_s'] / base:.2f}x" if base else "-"
            ms = lambda key: f"{r[key]:.1f}" if r[key] is not None else "-"
            print(f"{method:<7} {r['impl']:<38} {r['steps_per_s']:>8.2f} {ratio:>6} "
                  f"{r['step_ms']:>8.1f} {ms('worker_compute_ms'):>8} {ms('round_ms'):>6} "
                  f"{ms('reduce_ms'):>6} {r['weighting_ms']:>12.2f} "
                  f"{100 * r['weighting_share']:>5.1f}%"
                  + (" {:>6.2f}-{:<6.2f}".format(*r["steps_per_s_range"])
                     if args.repeat > 1 else ""))
    if not args.skip_two_workers:
        print()
        for method in args.methods:
            for form in args.forms:
                one, two = (next(r for r in rows if r["method"] == method
                                 and r["workers"] == n and r["form"] == form) for n in (1, 2))
                print(f"{method} {form} 2 workers / 1 worker: "
                      f"{two['steps_per_s'] / one['steps_per_s']:.2f}x "
                      f"(two one-thread matrix multiplies at once: {matmul_scaling:.2f}x one"
                      + (f", {min(scalings):.2f}-{max(scalings):.2f}x over the runs"
                         if args.repeat > 1 else "") + ")")
    print("targets: weighting under 10% of the step, 1 worker at least the reference's "
          "steps/s, 2 workers at least 1.7x one")
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    out = os.path.join(ROOT, "bench", "results", f"mtl-{args.steps}.json")
    with open(out, "w") as f:
        json.dump({"steps": args.steps, "warmup": WARMUP, "batch": args.batch, "hidden": HIDDEN,
                   "chunk_rows": args.chunk_rows, "repeat": args.repeat,
                   "matmul_two_process_scaling": matmul_scaling,
                   "matmul_two_process_scaling_runs": scalings,
                   "rows": rows, "runs": runs}, f, indent=2)
    print(f"\nwritten to {os.path.relpath(out, ROOT)}")


if __name__ == "__main__":
    main()
