# The two commands of the README. Both create .venv with Python >= 3.11 and install the project.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install install-test demo demo-quick demo-multiclass test test-fast lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/segbalance demo --work-dir runs/demo

demo-quick: $(STAMP)
	$(VENV)/bin/segbalance demo --work-dir runs/demo-quick --quick

demo-multiclass: $(STAMP)
	$(VENV)/bin/segbalance demo --task multiclass --work-dir runs/demo-multiclass

lint: $(STAMP)
	$(VENV)/bin/ruff check segbalance tests benchmarks
	$(VENV)/bin/ruff format --check segbalance tests benchmarks
	$(VENV)/bin/mypy segbalance

# One test process per core (pytest-xdist): much of the suite is single-threaded Python or
# waits on subprocesses, so one process alone leaves a core idle. worksteal: a process that
# runs out of tests takes queued ones from the other, so the long trainings do not queue up.
test: lint
	$(VENV)/bin/pytest -q -n auto --dist worksteal

# Everything but the tests marked heavy (large encoders, multi-process training).
test-fast: lint
	$(VENV)/bin/pytest -q -n auto --dist worksteal -m "not heavy"

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs build *.egg-info
