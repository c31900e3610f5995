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

# `make demo`: fresh machine -> .venv -> a held-out synthetic video segmented by the embedded world model
# (glus_jax/assets/tiny_world), masks + overlay mp4 under runs/demo, last line `J&F: <value>`.
# `make demo DEMO_ARGS=--random-model` checks the plumbing with an untrained model.
.PHONY: demo
DEMO_ARGS ?=
demo: install
	$(PY) -m glus_jax.demo $(DEMO_ARGS)
