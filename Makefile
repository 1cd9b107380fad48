# python3 from PATH (a pyenv build here); Debian's /usr/bin/python3 refuses pip installs
# outside a venv (PEP 668), so everything runs from .venv.
PYTHON ?= python3
VENV := .venv
PYTEST_ARGS ?=

.PHONY: venv system test run bench bench-stall bench-imap mutate clean

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

# Options pass through (see bench/README.md): make bench BENCH_ARGS=--quick,
# make bench-stall STALL_ARGS="--cases ''", make bench-imap IMAP_ARGS="--sessions 500"
BENCH_ARGS ?=
STALL_ARGS ?=
IMAP_ARGS ?=
bench: system venv
	$(VENV)/bin/python bench/smtp_throughput.py $(BENCH_ARGS)

bench-stall: system venv
	$(VENV)/bin/python bench/data_stall.py $(STALL_ARGS)

bench-imap: system venv
	$(VENV)/bin/python bench/imap_sessions.py $(IMAP_ARGS)

# Mutation testing of the modules where a bug loses mail or opens a hole, in a scratch
# copy of the tree; long, so not part of `make test` or CI. See docs/testing.md.
# One module: make mutate MUTATE_ARGS="--module mailproxy/policy.py"
MUTATE_ARGS ?=
mutate: system $(VENV)/.mutate-stamp
	$(VENV)/bin/python scripts/mutate.py $(MUTATE_ARGS)

$(VENV)/.mutate-stamp: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -e '.[test,mutate]'
	touch $@

clean:
	rm -rf $(VENV) var build *.egg-info .hypothesis .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
