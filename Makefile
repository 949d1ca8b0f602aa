# make test / make demo work on a fresh machine with nothing but Python.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# The CPU build of torch installs in seconds here; an unpinned torch pulls a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
# Pinned so the SVG snapshot tests see the same rendering everywhere.
TEXTUAL ?= textual==8.2.8

.PHONY: test demo venv bench screenshots clean

# setup.py and the C sources: an edited extension is built again by the next make
$(VENV)/.installed: pyproject.toml setup.py engine/run/_moments.c engine/run/_stepper.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)" "$(TEXTUAL)"
	$(PY) -m pip install -q -e ".[test,serve]"
	touch $@

venv: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q -p no:cacheprovider -n auto --dist loadfile

demo: $(VENV)/.installed
	$(VENV)/bin/tsdebug demo

bench: $(VENV)/.installed
	$(PY) bench/run_all.py

screenshots: $(VENV)/.installed
	$(PY) scripts/screenshots.py

clean:
	rm -rf $(VENV) build *.egg-info engine/run/_moments.*.so engine/run/_stepper.*.so
