# Two commands a user needs: `make demo` and `make test`. Both set up the environment first.
#
# `make setup` installs the tested set of exact versions in constraints.txt (torch's pin included).
# Own environment (conda, a cluster module, a CUDA machine with torch already installed):
#   make test PYTHON=$(which python) TORCH=
# then no .venv is created, torch (and its triton) is left as it is, and everything else takes the tested versions;
# add CONSTRAINTS= to take setup.py's ranges instead. `make constraints` refreshes the tested set.
VENV        ?= .venv
PYTHON      ?= $(VENV)/bin/python
CONSTRAINTS ?= constraints.txt
TORCH       ?= $(shell grep -m1 '^torch==' constraints.txt)
OUT         ?= demo-out
STAMP       ?= .setup-stamp
LOCK_VENV   ?= .lock-venv
WHEELS      ?= .whl
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.torch_extensions
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test constraints gpu-wheels clean

setup: $(STAMP)

$(VENV)/bin/python:
	python3 -m venv $(VENV)

# torch first, exactly as pinned, then everything else constrained to the tested set and that torch. mdist builds
# with the pinned setuptools (no build isolation), so the build backend is one of the tested versions too.
$(STAMP): setup.py $(CONSTRAINTS) | $(PYTHON)
	{ [ -z "$(CONSTRAINTS)" ] || grep -vE '^(torch$(if $(TORCH),,|triton))==' $(CONSTRAINTS); \
	  [ -z "$(TORCH)" ] || echo "$(TORCH)"; } > .constraints.txt
	$(PYTHON) -m pip install -q -c .constraints.txt --upgrade pip setuptools
ifneq ($(TORCH),)
	$(PYTHON) -m pip install -q -c .constraints.txt "$(TORCH)"
endif
	$(PYTHON) -m pip install -q -c .constraints.txt --no-build-isolation -e ".[test]"
	echo "$(PYTHON)" > $@

demo: setup
	$(PYTHON) -m mdist demo --out $(OUT)

test: setup
	$(PYTHON) -m pytest -q tests

# The newest releases (torch stays at TORCH) in a scratch environment, the whole suite there as CI runs it (SLURM
# tests fail rather than skip), and constraints.txt rewritten only if it passes.
constraints:
	rm -rf $(LOCK_VENV)
	CI=true $(MAKE) --no-print-directory test VENV=$(LOCK_VENV) STAMP=$(LOCK_VENV)/setup-stamp CONSTRAINTS= TORCH="$(TORCH)"
	{ echo "# The tested set: every package mdist[test] installs, at the versions the whole suite passed with."; \
	  echo "# Written by \`make constraints\` on $$(date -u +%F) ($$($(LOCK_VENV)/bin/python -V)); edit by rerunning it."; \
	  $(LOCK_VENV)/bin/python -m pip freeze --all --exclude-editable | sed -E 's/\+[^ ]*$$//'; } > $(LOCK_VENV)/constraints.txt
	mv $(LOCK_VENV)/constraints.txt constraints.txt

# The lent GPU machine's missing packages (benchmarks/gpu_wheels.txt, at constraints.txt's pins) as wheels for its
# Python 3.12 in $(WHEELS), to carry there and install with pip's --no-index --no-deps --target (see that file).
# Needs pip and PyPI, not the .venv; wheels already there are kept.
gpu-wheels:
	bash benchmarks/gpu_wheels.sh $(WHEELS)

clean:
	rm -rf $(VENV) $(LOCK_VENV) .constraints.txt $(STAMP) $(OUT) .torch_extensions $(WHEELS)
