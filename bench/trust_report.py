"""One table of what outerloop survives and refuses: every fault in one run, hostile calls, load.

Runs, in this one invocation (release builds), each appending its figures to one JSON-lines
file (the OUTERLOOP_TRUST_REPORT variable names it):
  1. tests/chaos.rs: one run of 5000 steps on three workers in which two workers are
     SIGKILLed, one is SIGSTOPped past its timeout, one's link is cut and restored, the
     coordinator is SIGKILLed and restarted on another port, and a poisoned result is sent;
     its final parameters are compared with an undisturbed run's;
  2. tests/hostile_calls.rs: every RPC called without a token, with a token nobody was
     given and with the other role's token, then with what it must not accept;
  3. the load example (coordinator/examples/load): --workers in-process worker clients
     against one coordinator for --seconds, counting every chunk;
then prints the table (Markdown), and writes the figures to bench/results/trust.json.

Usage (from the repository root, with libtorch set up as `make setup` does):
    python bench/trust_report.py --workers 256 --seconds 20
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, report):
    env = dict(os.environ, OUTERLOOP_TRUST_REPORT=report)
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)


def figures(report):
    with open(report) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    by_check = {}
    for line in lines:
        by_check.setdefault(line["check"], []).append(line)
    return by_check


def table(by_check, args):
    chaos = by_check["faults survived in one run"][-1]
    hostile = by_check["hostile calls refused"][-1]
    load = by_check["load"][-1]
    faults = chaos["faults"]
    lost = [chaos["steps_lost"], load["lost"]]
    twice = [chaos["steps_twice"], load["counted_twice"]]
    rows = [
        ("faults survived in one run (`tests/chaos.rs`)",
         f"{len(faults)} of {len(faults)}: {', '.join(faults)}; {chaos['steps']} steps, each "
         f"once; final parameters {'bit-identical' if chaos['bit_identical'] else 'DIFFERENT'} "
         "to an undisturbed run's"),
        ("hostile calls refused (`tests/hostile_calls.rs`)",
         f"{hostile['refused_as_expected']} of {hostile['calls']} with the expected gRPC status "
         "(or ignored), nothing changed"),
        (f"load held (`make bench-load`'s example, {load['workers']} workers, {args.seconds} s)",
         f"{load['chunks_per_s']:,.0f} chunks/s, {load['steps_per_s']:.1f} steps/s, lease round "
         f"trip p50 {load['lease_p50_ms']:.1f} ms, p99 {load['lease_p99_ms']:.1f} ms, peak RSS "
         f"{load['peak_mib']:.0f} MiB" if load["peak_mib"] is not None else
         f"{load['chunks_per_s']:,.0f} chunks/s"),
        ("chunks lost", "FAIL" if None in lost else
         f"{sum(lost)} (chaos: {lost[0]} steps missing; load: {lost[1]} chunks)"),
        ("chunks counted twice", "FAIL" if None in twice else
         f"{sum(twice)} (chaos: {twice[0]} steps twice; load: {twice[1]} chunks)"),
    ]
    out = ["| check | result |", "| --- | --- |"]
    out += [f"| {check} | {result} |" for check, result in rows]
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=256)
    p.add_argument("--seconds", type=int, default=20)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "trust.jsonl")
        run(["cargo", "test", "--release", "-p", "outerloop", "--test", "chaos",
             "--test", "hostile_calls"], report)
        run(["cargo", "run", "--release", "-p", "outerloop-coordinator", "--example", "load",
             "--", "--workers", str(args.workers), "--seconds", str(args.seconds)], report)
        by_check = figures(report)
    print(table(by_check, args))
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "trust.json"), "w") as f:
        json.dump(by_check, f, indent=1)


if __name__ == "__main__":
    main()
