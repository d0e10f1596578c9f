# The two commands a newcomer needs (each sets up whatever is missing first, then is quick):
#   make demo    the whole pipeline end to end on a generated dataset (local Ray, files, MLflow)
#   make test    the test suite
# Set-up is ./install.sh (a .venv with torch CPU, Ray, MLflow, the devkit, spconv, MinkowskiEngine; system
# packages via apt-get). It re-runs only when install.sh or pyproject.toml changed.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.afov-installed
export RAY_AUTH_MODE ?= disabled

.PHONY: demo test setup clean-outputs

demo: $(STAMP)
	$(PY) jobs/demo.py

test: $(STAMP)
	$(PY) -m pytest -q

setup: $(STAMP)

$(STAMP): install.sh pyproject.toml
	./install.sh
	touch $(STAMP)

clean-outputs:
	rm -rf outputs
