# mfwrap developer targets. `make demo` and `make test` set up everything from scratch.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
PIPC    = $(PIP) install -q -c constraints.txt
STAMP   = $(VENV)/.installed

.PHONY: venv demo test test-fast lint bench docs clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIPC) torch==2.13.0
	$(PIPC) -e ".[test,bench,triton,docs]" torch==2.13.0
	# torch-scatter has no wheel on PyPI: compiled once (~10 min), then taken from pip's cache.
	$(PIPC) --no-build-isolation "torch-scatter>=2.1" torch==2.13.0
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m mfwrap.demo

# tests/test_docs.py runs the tutorials and builds the documentation with mkdocs build --strict
test: $(STAMP) lint
	$(PY) -m pytest -q -n 2 tests

# style is checked, not discussed: ruff's rules and formatter as configured in pyproject.toml
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test-fast: $(STAMP)
	$(PY) -m pytest -q -x tests

docs: $(STAMP)
	$(PY) -m mkdocs build --strict --site-dir site

bench: $(STAMP)
	$(PY) benchmarks/speed_chgnet.py

clean:
	rm -rf $(VENV) build site *.egg-info
