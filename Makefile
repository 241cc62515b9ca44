# Every target sets itself up: a virtual environment in .venv with the CPU
# build of torch, then this package (editable) with its test extras, the
# fast extra (numba: compiled decoding loops) and the
# cluster extra (tests/test_cluster.py runs a two-worker Dask cluster).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test,cluster,fast]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -m "slow or not slow"

# All codecs side by side on the evaluation sets (scripts/build_corpus.py), the
# first 128 images of each, plus OSOA on 100 to 10000 tiles: 36 minutes on a busy
# shared 2-core VM (the sets 21, the scaling 15).  Writes docs/bench/ (results.md
# is the README's results section).
BENCH_SETS := $(addprefix data/eval/,tiles32 tiles64 fashion_mnist gray32 photos768)

bench: $(STAMP)
	-$(VENV)/bin/pip install --quiet -e '.[bench]'  # optional: without it JPEG XL is skipped, no plots
	$(PY) -m osoa_zip bench $(BENCH_SETS) --limit 128 --scaling 100,1000,10000 -o docs/bench

clean:
	rm -rf $(VENV) build dist *.egg-info
