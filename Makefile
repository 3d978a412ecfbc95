# One-command entry points. Variables: COMP (competition), PORT (local host), VENV (virtual env folder).
COMP ?= fashion-mnist
PROFILE ?=
MODEL ?=
FOLD ?=
PORT ?= 80
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kpipe-installed

.PHONY: help install test serve stop-host download prepare train tune report submit bench clean

help:
	@echo "make submit COMP=fashion-mnist   download -> prepare -> train -> TTA -> ensemble -> submit"
	@echo "make test                        run the test suite"
	@echo "make prepare COMP=digits         download + cached arrays + stratified folds"
	@echo "make train COMP=x MODEL=m FOLD=k retrain one fold of one model (and nothing else)"
	@echo "make tune COMP=x MODEL=m TRIALS=n [WORKERS=k] [STORAGE=url] [STUDY=name]   Optuna study"
	@echo "make bench                       data-path and training throughput benchmark"
	@echo "make serve [PORT=80]             run the local Kaggle-compatible host in the foreground"
	@echo "make stop-host                   stop a host started in the background"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest -q

serve: install
	$(PY) -m competition.host serve --port $(PORT)

stop-host: install
	$(PY) -m competition.host stop

download: install
	$(PY) -m pipelines download --comp $(COMP)

prepare: install
	$(PY) -m pipelines prepare --comp $(COMP)

train: install
	$(PY) -m pipelines train --comp $(COMP) $(if $(PROFILE),--profile $(PROFILE)) $(if $(MODEL),--model $(MODEL)) $(if $(FOLD),--fold $(FOLD))

submit: install
	$(PY) -m pipelines submit --comp $(COMP) $(if $(PROFILE),--profile $(PROFILE)) $(if $(filter-out 0,$(DRY_RUN)),--dry-run)

tune: install
	$(PY) -m pipelines tune --comp $(COMP) $(if $(PROFILE),--profile $(PROFILE)) $(if $(MODEL),--model $(MODEL)) \
		--trials $(or $(TRIALS),20) $(if $(STORAGE),--storage '$(STORAGE)') $(if $(STUDY),--study $(STUDY)) \
		$(if $(WORKERS),--workers $(WORKERS))

report: install
	$(PY) -m pipelines report --comp $(COMP) $(if $(PROFILE),--profile $(PROFILE))

bench: install
	$(PY) -m pipelines.bench

clean:
	rm -rf .data/$(COMP)
