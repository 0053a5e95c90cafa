# Quick start: `make run` (main job) and `make test` (whole suite) on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test clean

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test,torch,onnx,ort,plot]'
	touch $@

# The main job: compile every example spec, check it against the oracle, print a table;
# then compile ResNet-18 from specs/nets/ as one library, run it on a seeded random input,
# check it against the composed oracle, print the per-layer summary and the end-to-end time.
run: $(VENV)/.installed
	$(VENV)/bin/convgen check specs/*.toml
	$(VENV)/bin/convgen run specs/nets/resnet18.toml --check --summary

test: $(VENV)/.installed-test
	$(PY) -m pytest -q -n 2 tests

clean:
	rm -rf $(VENV) build dist *.egg-info
