# Quick start: `make run` (main job) and `make test` (whole suite) on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test clean sanitize fuzz

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test,torch,onnx,ort,plot,export,distributed]'
	touch $@

# The main job: compile every example spec, check it against the oracle, print a table;
# then compile ResNet-18 from specs/nets/ as one library, run it on a seeded random input,
# check it against the composed oracle, print the per-layer summary and the end-to-end time.
run: $(VENV)/.installed
	$(VENV)/bin/convgen check specs/*.toml
	$(VENV)/bin/convgen run specs/nets/resnet18.toml --check --summary

test: $(VENV)/.installed-test
	$(PY) -m pytest -q -n 2 tests

# The C kernels, whole networks and the CUDA emulator built with AddressSanitizer and
# UBSan, and the property suites run against them (tests/sanitize/run.sh; ~13 minutes on
# 2 cores; extra pytest arguments: make sanitize ARGS="-x -k depthwise").
sanitize: $(VENV)/.installed-test
	PY=$(PY) tests/sanitize/run.sh $(ARGS)

# Fuzzed spec files, network files and ONNX models (tests/fuzz_inputs.py): fresh random
# inputs each run, huge numbers included, under a 6 GiB address-space limit so that a huge
# allocation fails as a MemoryError (a bug) instead of exhausting the machine; about a minute.
FUZZ_EXAMPLES ?= 1500
fuzz: $(VENV)/.installed-test
	ulimit -v 6291456; CONVGEN_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) CONVGEN_FUZZ_HUGE=1 \
	    $(PY) -m pytest -q -p no:cacheprovider tests/test_fuzz.py -W ignore::RuntimeWarning $(ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info
