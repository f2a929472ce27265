"""A coordinator and worker processes on loopback, for the benchmark scripts.

    with Cluster(binary, workers=2, worker_args=["--data-root", data]) as cluster:
        exp = cluster.submit(spec, ["meta.steps=100"])
        cluster.watch(exp)
        status, metrics = cluster.status(exp), cluster.metrics(exp)

The coordinator listens on a free port and keeps its state in a temporary directory; the
processes' output goes to processes.log there; everything is stopped and removed on exit.
"""
import json
import os
import subprocess
import tempfile
import time


class Cluster:
    def __init__(self, binary, workers=1, worker_args=(), device="cpu", coordinator_args=()):
        self.binary = binary
        self.workers = workers
        self.worker_args = list(worker_args)
        self.coordinator_args = list(coordinator_args)
        self.device = device
        self.procs = []

    def __enter__(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="outerloop-bench-")
        self.state = self._tmp.name
        port_file = os.path.join(self.state, "addr")
        self._log = open(os.path.join(self.state, "processes.log"), "w")
        self._start("coordinator", "--listen", "127.0.0.1:0", "--state-dir", self.state,
                    "--port-file", port_file, *self.coordinator_args)
        deadline = time.monotonic() + 60
        while not os.path.exists(port_file):
            if self.procs[0].poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the coordinator did not start; see {self.state}/processes.log")
            time.sleep(0.02)
        self.url = "http://" + open(port_file).read().strip()
        for i in range(self.workers):
            self._start("worker", "--coordinator", self.url, "--device", self.device,
                        "--threads", "1", "--name", f"bench-{i}", *self.worker_args)
        # Specs on a dataset are checked against what workers report when they register.
        while len(self.cli("workers", "--json").splitlines()) < self.workers:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait()
        self._log.close()
        self._tmp.cleanup()

    def _start(self, *args):
        self.procs.append(subprocess.Popen([self.binary, *args], stdout=self._log,
                                           stderr=self._log))

    def cli(self, *args):
        """Runs `outerloop ARGS --coordinator URL` and returns its output."""
        return subprocess.run([self.binary, *args, "--coordinator", self.url], check=True,
                              stdout=subprocess.PIPE, text=True).stdout

    def submit(self, spec, overrides):
        args = ["submit", spec]
        for o in overrides:
            args += ["--set", o]
        return self.cli(*args).strip()

    def watch(self, exp):
        """Waits for the experiment to end (whatever its state)."""
        subprocess.run([self.binary, "watch", exp, "--coordinator", self.url],
                       stdout=subprocess.DEVNULL)

    def status(self, exp):
        return json.loads(self.cli("status", exp, "--json"))

    def run_finished(self, spec, overrides):
        """Submits `spec` with `overrides`, waits for it and returns its final status; exits
        naming the overrides if it did not finish."""
        exp = self.submit(spec, overrides)
        self.watch(exp)
        status = self.status(exp)
        if status["state"] != "finished":
            raise SystemExit(f"{overrides}: {status['state']}: {status.get('error')}")
        return status

    def metrics(self, exp):
        path = os.path.join(self.state, "experiments", exp, "metrics.jsonl")
        with open(path) as f:
            return [json.loads(line) for line in f]


def train_mean(metrics, field, skip):
    """The mean of `field` over the train lines of metrics.jsonl, skipping the first `skip`
    steps (warm-up) when there are enough."""
    train = [m for m in metrics if m["kind"] == "train"]
    train = train[skip:] or train
    return sum(m[field] for m in train) / len(train)


def step_split(metrics, skip):
    """Mean step time and the slowest worker's compute time in it, in seconds, skipping the
    first `skip` steps (warm-up) when there are enough."""
    return (train_mean(metrics, "step_seconds", skip),
            train_mean(metrics, "critical_compute_seconds", skip))
