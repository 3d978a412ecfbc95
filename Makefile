# One-command entry points. Variables: COMP (competition), PORT (local host), VENV (virtual env folder).
# Every target first installs what a fresh Debian machine lacks (pipelines/tools/system_packages.py), then the venv.
COMP ?= fashion-mnist
PROFILE ?=
BUDGET ?=
PLAN ?=
MODEL ?=
FOLD ?=
PORT ?= 80
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kpipe-installed

# Numbers are checked here, before anything is installed or started: `WORKERS=abc` is one line naming the
# variable, not a usage block from deep inside Python minutes later. (Ranges the spec decides, such as
# which folds exist, are checked by the command itself.)
digits_removed = $(strip $(subst 0,,$(subst 1,,$(subst 2,,$(subst 3,,$(subst 4,,$(subst 5,,$(subst 6,,$(subst 7,,\
	$(subst 8,,$(subst 9,,$(1))))))))))))
not_whole = $(or $(call digits_removed,$(1)),$(filter-out 1,$(words $(1))))
check_whole = $(if $(strip $($(1))),$(if $(call not_whole,$($(1))),$(error $(1)=$($(1)): must be a whole number ($(2)))))
$(call check_whole,WORKERS,Dask workers on this machine; e.g. WORKERS=2)
$(call check_whole,TRIALS,trials to add to the study; e.g. TRIALS=20)
$(call check_whole,THREADS,threads this command may use; e.g. THREADS=2)
$(call check_whole,GPUS,devices each run is spread over; e.g. GPUS=2)
$(call check_whole,FOLD,folds count from 0; e.g. FOLD=0)
$(call check_whole,PORT,a TCP port; e.g. PORT=8080)
$(call check_whole,IMAGES,images in the memory benchmark; e.g. IMAGES=40000)
$(call check_whole,SIDE,the memory benchmark's image side in pixels; e.g. SIDE=128)

# A storage URL may hold a password: it reaches the tuner through the environment, never a recipe line,
# so make's echo of the command cannot show it.
ifneq ($(STORAGE),)
export KPIPE_OPTUNA_STORAGE := $(STORAGE)
endif

# Training on Dask workers: WORKERS=n (a LocalCluster here) or SCHEDULER=tcp://host:8786 (a running cluster);
# or each run data-parallel over GPUS=n devices (DDP through torchrun).
CLUSTER = $(if $(WORKERS),--workers $(WORKERS)) $(if $(SCHEDULER),--scheduler $(SCHEDULER)) $(if $(GPUS),--gpus $(GPUS))

# Sharing the cores with other kpipe processes (pipelines/machine/cores.py): CORES=share (default) takes a fair
# share at once, CORES=wait waits until a core is free; THREADS=n caps this command's threads.
ifneq ($(CORES),)
export KPIPE_CORES := $(CORES)
endif
ifneq ($(THREADS),)
export KPIPE_THREADS := $(THREADS)
endif
# DETERMINISTIC=1: repeatable kernels (cuDNN autotuner off, deterministic algorithms), named where slower.
ifneq ($(DETERMINISTIC),)
export KPIPE_DETERMINISTIC := $(DETERMINISTIC)
endif

# A fixed profile (PROFILE=quick|full), a time budget (BUDGET=15m) or a replayed plan (PLAN=file).
RECIPE = $(if $(PROFILE),--profile $(PROFILE)) $(if $(BUDGET),--budget=$(BUDGET)) $(if $(PLAN),--plan=$(PLAN))

.PHONY: help install system-run system-test test test-fast serve stop-host init download prepare train tune report submit scores predict export wheelhouse bench bench-curve bench-memory prune clean

help:
	@echo "make init COMP=<slug>            draft competition/<slug>.yaml from the Kaggle API and the download [HOST=, FORCE=1]"
	@echo "make submit COMP=fashion-mnist   download -> prepare -> plan -> train -> TTA -> ensemble -> submit"
	@echo "  [BUDGET=15m | PLAN=plan.json | PROFILE=quick]   time budget (default: the spec's), replay, fixed recipe"
	@echo "  [WORKERS=n | SCHEDULER=tcp://host:8786]          train the (model, fold) runs on Dask workers"
	@echo "  [GPUS=n] [DETERMINISTIC=1]                       each run data-parallel on n devices; reproducible kernels"
	@echo "  [ON=kaggle [GPU=0]]                              train in a kernel on the host's machine, then submit from here"
	@echo "make test                        run the whole test suite and the import contracts (what CI runs)"
	@echo "make test-fast                   the quick tier while working: the contracts and the tests not marked slow"
	@echo "make prepare COMP=digits         download + cached arrays + stratified folds"
	@echo "make train COMP=x MODEL=m FOLD=k retrain one fold of one model (and nothing else)"
	@echo "make tune COMP=x MODEL=m TRIALS=n [WORKERS=k | SCHEDULER=tcp://host:8786 STORAGE=postgresql://...]"
	@echo "  [STUDY=name]                   Optuna study; trials on Dask workers beside this process"
	@echo "make predict COMP=x INPUT=<folder|.npy|.csv> [OUT=preds.csv] [RUN=<config hash>] [RESIZE=1] [PROBS=1]"
	@echo "                                 a logged run's ensemble on new images"
	@echo "make export COMP=x [RUN=<config hash>] [TARGET=<code competition>]   package a run for a Kaggle code competition"
	@echo "make wheelhouse [PUBLISH=local|kaggle] [PYTHON_VERSION=3.12]   kpipe + its wheels (but torch) as a dataset for offline notebooks"
	@echo "make scores COMP=x              fill the log's pending and (after the deadline) private scores"
	@echo "make prune COMP=x [DRY_RUN=1]    remove outputs that no logged submission, plan or study needs"
	@echo "make bench                       data-path, training, inference and concurrency benchmark"
	@echo "make bench-curve COMP=x [SECONDS=60,120]   accuracy after N seconds of training, per pool candidate"
	@echo "  any computing command: [CORES=share|wait] [THREADS=n]   beside other kpipe runs: fair share or queue"
	@echo "make serve [PORT=80]             run the local Kaggle-compatible host in the foreground"
	@echo "make stop-host                   stop a host started in the background"

system-run:
	@$(PYTHON) -m pipelines.tools.system_packages run

system-test:
	@$(PYTHON) -m pipelines.tools.system_packages test

$(STAMP): pyproject.toml | system-run
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: system-test install
	$(VENV)/bin/lint-imports --no-logo --no-cache
	$(PY) -m pytest -q

test-fast: system-test install
	$(VENV)/bin/lint-imports --no-logo --no-cache
	$(PY) -m pytest -q -m "not slow"

serve: install
	$(PY) -m competition.host serve --port $(PORT)

stop-host: install
	$(PY) -m competition.host stop

# Draft competition/$(COMP).yaml from the Kaggle API and the download (HOST=kaggle|local; FORCE=1 redrafts).
init: install
	$(PY) -m pipelines.tools.init --slug $(COMP) $(if $(HOST),--host $(HOST)) $(if $(filter-out 0,$(FORCE)),--force)

download: install
	$(PY) -m pipelines download --comp $(COMP)

prepare: install
	$(PY) -m pipelines prepare --comp $(COMP)

train: install
	$(PY) -m pipelines train --comp $(COMP) $(RECIPE) $(CLUSTER) $(if $(MODEL),--model $(MODEL)) $(if $(FOLD),--fold $(FOLD))

# ON=kaggle: train in a kernel on the competition's host (GPU=0: without a GPU), then submit from here.
submit: install
ifeq ($(ON),kaggle)
	$(PY) -m pipelines.tools.on_kaggle --comp $(COMP) $(if $(BUDGET),--budget=$(BUDGET)) \
		$(if $(filter 0,$(GPU)),--no-gpu) $(if $(filter-out 0,$(DRY_RUN)),--dry-run)
else
	$(PY) -m pipelines submit --comp $(COMP) $(RECIPE) $(CLUSTER) $(if $(filter-out 0,$(DRY_RUN)),--dry-run)
endif

tune: install
	$(PY) -m pipelines tune --comp $(COMP) $(if $(PROFILE),--profile $(PROFILE)) $(if $(MODEL),--model $(MODEL)) \
		--trials $(or $(TRIALS),20) $(if $(STUDY),--study $(STUDY)) $(if $(WORKERS),--workers $(WORKERS)) \
		$(if $(SCHEDULER),--scheduler $(SCHEDULER))

scores: install
	$(PY) -m pipelines scores --comp $(COMP)

report: install
	$(PY) -m pipelines report --comp $(COMP) $(RECIPE)

prune: install
	$(PY) -m pipelines prune --comp $(COMP) $(if $(filter-out 0,$(DRY_RUN)),--dry-run)

predict: install
	@test -n "$(INPUT)" || { echo "error: set INPUT= to a folder of images, a .npy array or a CSV of paths"; exit 2; }
	$(PY) -m pipelines predict --comp $(COMP) --input "$(INPUT)" $(if $(OUT),--out "$(OUT)") $(if $(RUN),--run $(RUN)) \
		$(if $(filter-out 0,$(RESIZE)),--resize) $(if $(filter-out 0,$(PROBS)),--probs)

export: install
	$(PY) -m pipelines export --comp $(COMP) $(if $(RUN),--run $(RUN)) $(if $(TARGET),--competition $(TARGET)) \
		$(if $(OWNER),--owner $(OWNER))

bench: install
	$(PY) -m pipelines.tools.bench

bench-curve: install
	$(PY) -m pipelines.tools.bench_curve --comp $(COMP) $(if $(SECONDS),--seconds $(SECONDS))

# kpipe and the wheels it needs besides torch, as a Kaggle dataset (PUBLISH=local|kaggle; PYTHON_VERSION=3.12 for a
# notebook whose Python differs from this one).
wheelhouse: install
	$(PY) -m pipelines.tools.wheelhouse $(if $(PYTHON_VERSION),--python-version $(PYTHON_VERSION)) $(if $(PUBLISH),--publish $(PUBLISH))

# Data larger than memory: memory-mapped against in memory (IMAGES=66500 SIDE=208: 9.1 GB of arrays).
bench-memory: install
	$(PY) -m pipelines.tools.bench_memory --images $(or $(IMAGES),66500) --side $(or $(SIDE),208)

clean:
	rm -rf .data/$(COMP)
