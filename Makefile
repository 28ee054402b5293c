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

.PHONY: setup test-setup data demo study test test-all bench lint clean-results slurm-up slurm-down

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

demo: setup
	snakemake $(PROFILE_LOCAL) --cores $(CORES) --configfile params/experiments/demo.yaml
	@advsoup where --config params/experiments/demo.yaml

study: setup
	snakemake $(PROFILE_LOCAL) --cores $(CORES) --configfile params/experiments/study.yaml
	@advsoup where --config params/experiments/study.yaml

test: test-setup
	pytest -m "not slow" -q

# Everything, including the long end-to-end tests.
test-all: test-setup
	pytest -q

bench: setup
	python benchmarks/run.py

lint: setup
	snakemake --lint --configfile params/experiments/demo.yaml

slurm-up:
	bash scripts/slurm/start.sh

slurm-down:
	bash scripts/slurm/stop.sh
