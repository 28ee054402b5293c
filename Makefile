# advsoup: one entry point for set-up, the demo, the study, tests and benchmarks.
SHELL := /bin/bash
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# torch and torchvision are installed first and pinned: on this kind of machine
# pip takes them from local files. On a cluster, set TORCH_SPEC (and PIP_EXTRA
# _INDEX_URL) to the CUDA build you want, e.g. TORCH_SPEC="torch==2.14.1 torchvision==0.29.1".
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
FMNIST_DIR := /usr/share/datasets/fashion-mnist
PROFILE_LOCAL := --workflow-profile workflow/profiles/local
CORES ?= 2

.PHONY: setup test-setup data demo study regime test test-all bench lint clean-results slurm-up slurm-down \
	plots plots-template exp-show

setup: $(VENV)/.setup-done data

$(VENV)/.setup-done: pyproject.toml
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q $(TORCH_SPEC)
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

# Debian's dataset-fashion-mnist (MIT) ships the real Fashion-MNIST IDX files.
data:
	@bash scripts/system-packages.sh install data

# What the test suite needs besides Python: Debian's Slurm, munge and MariaDB packages (the
# SLURM tests start a single-node cluster from them). Installed before pytest starts, so no
# test depends on another having run.
test-setup: setup
	@bash scripts/system-packages.sh install test

# `advsoup runs` first: it names a broken experiment file (line, column), which Snakemake's own
# --configfile reading does not.
demo: setup
	@advsoup runs --config params/experiments/demo.yaml > /dev/null
	snakemake $(PROFILE_LOCAL) --cores $(CORES) --configfile params/experiments/demo.yaml
	@advsoup where --config params/experiments/demo.yaml

# BATCH=i/n: only the i-th of n parts of the per-run metric files (Snakemake's --batch), for a study longer
# than a session or an allocation: 1/n .. n/n, then `make study` without BATCH makes the report.
study: setup
	@advsoup runs --config params/experiments/study.yaml > /dev/null
	snakemake $(PROFILE_LOCAL) --cores $(CORES) --configfile params/experiments/study.yaml \
		$(if $(BATCH),metrics --batch metrics=$(BATCH))
	@advsoup where --config params/experiments/study.yaml

# Issue 15: where does co-training raise clean accuracy? Train + evaluate + the regime report only
# (report.targets: [regime] in the experiment file): ~1.7-2 h on 2 idle cores.
regime: setup
	@advsoup runs --config params/experiments/regime.yaml > /dev/null
	snakemake $(PROFILE_LOCAL) --cores $(CORES) --configfile params/experiments/regime.yaml
	@echo "figure: results/regime/report/figures/regime.png  table: results/regime/report/tables/regime.csv  page: docs/results/regime.md"

test: test-setup
	pytest -m "not slow" -q

# Everything, including the long end-to-end tests.
test-all: test-setup
	pytest -q

# Benchmarks (BENCHMARKS.md). BENCH_ARGS e.g. --only train eval, --demo-dir <checkout with a finished demo>
BENCH_ARGS ?=
bench: setup
	python benchmarks/run.py $(BENCH_ARGS)

# Snakemake's linter; its conda/container lint is not applied (why: scripts/lint_workflow.py).
lint: setup
	python scripts/lint_workflow.py params/experiments/demo.yaml

slurm-up:
	bash scripts/slurm/start.sh

slurm-down:
	bash scripts/slurm/stop.sh

# Comparing commits and experiments with DVC (README). The page is drawn offline: Vega is inlined
# in .dvc/plots/offline.html. REV=<commit> compares the workspace with another commit.
REV ?= HEAD
plots: $(VENV)/.setup-done
	dvc plots diff $(REV) --html-template .dvc/plots/offline.html -o dvc_plots

# Rewrites .dvc/plots/offline.html (committed) from the Vega bundle vl-convert-python ships.
VL_CONVERT ?= vl-convert-python==1.9.0.post1
plots-template: $(VENV)/.setup-done
	python -c "import vl_convert" 2>/dev/null || pip install -q '$(VL_CONVERT)'
	python scripts/plots_template.py

# `dvc exp show` with the columns worth reading: the params that differ between the
# experiments, and each variant's headline accuracies. EXP_SHOW adds options (e.g. -A, --csv).
EXP_SHOW_KEEP ?= Experiment|Created|variants\.[^.]+\.(clean_acc_clean_mode|robust_acc_robust_mode)\.mean$$
EXP_SHOW_DROP ?= (results|data|src|workflow)/|Snakefile|experiment$$|attack\.|runs\.[^.]+-s[0-9]+\.|variants\.|masking_checks\.
exp-show: $(VENV)/.setup-done
	dvc exp show --no-pager --only-changed --keep '$(EXP_SHOW_KEEP)' --drop '$(EXP_SHOW_DROP)' $(EXP_SHOW)
