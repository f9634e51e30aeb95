# make install: .venv with torch 2.13.0 (CPU build, from local disk) installed *first*, then
# masksfm in editable mode with its test extras. A bare `torch` requirement resolved without
# torch installed would pull a multi-GB CUDA build; pinning it first prevents that.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0

.PHONY: install test test-fast demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

# The tests not marked slow (those that train, signal, run DDP or take more than a few seconds in a
# subprocess): a quick check while working.
test-fast: install
	$(PY) -m pytest -q -m "not slow"

demo: install
	$(VENV)/bin/masksfm demo

bench: install
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
