# python3 from PATH (a pyenv build here); Debian's /usr/bin/python3 refuses pip installs
# outside a venv (PEP 668), so everything runs from .venv.
PYTHON ?= python3
VENV := .venv
PYTEST_ARGS ?=

.PHONY: venv system test run bench bench-stall clean

venv: $(VENV)/.stamp

# Reinstall only when pyproject.toml changed since the last install.
$(VENV)/.stamp: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -e '.[test]'
	touch $@

system:
	PYTHON=$(PYTHON) bash scripts/install-system-packages.sh

test: system venv
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

run: system venv
	bash scripts/demo.sh

bench: system venv
	$(VENV)/bin/python bench/smtp_throughput.py

bench-stall: system venv
	$(VENV)/bin/python bench/data_stall.py

clean:
	rm -rf $(VENV) var build *.egg-info .hypothesis .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
