# `make test`: fresh machine -> .venv with everything -> the CI test suite.
PY := .venv/bin/python
export XLA_PYTHON_CLIENT_PREALLOCATE := false

.PHONY: install test test-slow lint clean

install:
	bash scripts/install.sh

test: install
	$(PY) -m pytest -q -x --durations=15

test-slow: install
	$(PY) -m pytest -q -m slow

clean:
	rm -rf .venv build *.egg-info
