# Two commands a user needs: `make demo` and `make test`. Both set up the environment first.
#
# Own environment (conda, a cluster module, a CUDA machine with torch already installed):
#   make test PYTHON=$(which python) TORCH=
# then no .venv is created, torch is left as it is, and only mdist (+ its other deps) is installed.
VENV    ?= .venv
PYTHON  ?= $(VENV)/bin/python
TORCH   ?= torch==2.13.0
OUT     ?= demo-out
STAMP   := .setup-stamp
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.torch_extensions
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test clean

setup: $(STAMP)

$(VENV)/bin/python:
	python3 -m venv $(VENV)

# torch first, exactly as pinned, then everything else constrained to that torch.
$(STAMP): setup.py | $(PYTHON)
	$(PYTHON) -m pip install -q --upgrade pip
ifneq ($(TORCH),)
	$(PYTHON) -m pip install -q "$(TORCH)"
	echo "$(TORCH)" > .constraints.txt
	$(PYTHON) -m pip install -q -c .constraints.txt -e ".[test]"
else
	$(PYTHON) -m pip install -q -e ".[test]"
endif
	echo "$(PYTHON)" > $@

demo: setup
	$(PYTHON) -m mdist demo --out $(OUT)

test: setup
	$(PYTHON) -m pytest -q tests

clean:
	rm -rf $(VENV) .constraints.txt $(STAMP) $(OUT) .torch_extensions
