# outerloop: `make demo` runs the main job on an embedded default; `make test` runs every test.
#
# libtorch comes from the PyPI wheel torch==$(TORCH_VERSION) (what tch 0.26 expects), installed
# once into a virtual environment in a cache directory outside the repository and reused after.
# A user who already has libtorch 2.13 sets LIBTORCH=/path/to/libtorch and skips the download.

TORCH_VERSION := 2.13.0
CACHE_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/outerloop
TORCH_VENV := $(CACHE_DIR)/torch-$(TORCH_VERSION)
# Bump when the environment's package list changes, so existing caches install what is new.
VENV_READY := $(TORCH_VENV)/.installed-2
PYTHON := $(TORCH_VENV)/bin/python
SYSTEM_PYTHON ?= python3

ifdef LIBTORCH
  TORCH_ENV := LIBTORCH="$(LIBTORCH)"
  TORCH_SETUP :=
  TEST_ENV :=
else
  # torch-sys asks this python where the wheel's libtorch is.
  TORCH_ENV := LIBTORCH_USE_PYTORCH=1 PATH="$(TORCH_VENV)/bin:$$PATH"
  TORCH_SETUP := $(VENV_READY)
  # Lets the end-to-end tests load exported parameters with PyTorch itself.
  TEST_ENV := OUTERLOOP_PYTHON="$(PYTHON)"
endif

.PHONY: all setup build demo demo-fewshot test lint bench bench-full bench-fewshot bench-mtl bench-mtl-large bench-load bench-trust device-build clean-demo
all: build

# The marker is written last, so an interrupted install is redone on the next run.
$(VENV_READY):
	@echo "Installing torch==$(TORCH_VERSION) into $(TORCH_VENV) (once; about 5 GB)"
	$(SYSTEM_PYTHON) -m venv "$(TORCH_VENV)" || { echo "error: '$(SYSTEM_PYTHON) -m venv' failed; on Debian or Ubuntu: apt-get install python3-venv"; exit 1; }
	"$(TORCH_VENV)/bin/pip" install --quiet "torch==$(TORCH_VERSION)" numpy safetensors pillow
	touch "$@"

setup: $(TORCH_SETUP)

build: setup
	$(TORCH_ENV) cargo build --release

demo: build
	./target/release/outerloop demo --state-dir outerloop-demo

# Few-shot: generates the synthetic Omniglot once, then a short 5-way 1-shot MAML run on it.
DEMO_DATA := outerloop-demo-data
demo-fewshot: build
	test -d $(DEMO_DATA)/omniglot/images_evaluation || ./target/release/outerloop dataset synth --out $(DEMO_DATA)/omniglot --force
	./target/release/outerloop demo --state-dir outerloop-demo --data-root $(DEMO_DATA) \
	  --spec configs/omniglot_5w1s_maml.toml --set model.filters=32 --set task.queries=5 \
	  --set meta.meta_batch=8 --set meta.chunk_tasks=4 --set meta.steps=400 --set eval.every=100 \
	  --set eval.tasks=100 --set eval.queries=5

lint: setup
	cargo fmt --all -- --check
	$(TORCH_ENV) cargo clippy --workspace --all-targets -- -D warnings

test: lint
	$(TORCH_ENV) $(TEST_ENV) cargo test --workspace

# Speed and results against the plain-PyTorch reference (the README's Results section).
# The benchmarks run the PyTorch reference from the cached environment, even with LIBTORCH set.
bench: build $(VENV_READY)
	$(PYTHON) bench/compare.py --steps 3000

bench-full: build $(VENV_READY)
	$(PYTHON) bench/compare.py --steps 70000 --eval-tasks 10000 --skip-two-workers --skip-reference

# conv4 few-shot MAML against the plain-PyTorch reference (generates the synthetic data once).
bench-fewshot: build $(VENV_READY)
	$(PYTHON) bench/compare_fewshot.py --steps 300

# A multi-task step (10 tasks, 1M shared parameters, PCGrad and MGDA) against PyTorch.
bench-mtl: build $(VENV_READY)
	$(PYTHON) bench/compare_mtl.py --steps 100 --repeat 3

# The same step with ten times the rows (1,000 per step, chunks of 500; `auto` picks dense
# gradients there): the workers' compute dominates the step.
bench-mtl-large: build $(VENV_READY)
	$(PYTHON) bench/compare_mtl.py --steps 40 --repeat 3 --batch 1000 --chunk-rows 500 --forms dense

# The coordinator under 16 to 1024 in-process workers that answer at once: throughput, lease
# latency, memory, and no chunk lost or counted twice.
bench-load: setup
	$(TORCH_ENV) cargo run --release -p outerloop-coordinator --example load -- --sweep

# One table: every fault in one run, every hostile call refused, load held, nothing lost.
bench-trust: setup
	$(TORCH_ENV) python3 bench/trust_report.py --workers 256 --seconds 20

# The binary for the lent GPU machine, built against that machine's older PyTorch
# (bench/device/build.sh; bench/device/check.sh is what runs there).
device-build:
	bench/device/build.sh

clean-demo:
	rm -rf outerloop-demo $(DEMO_DATA)
