PYTHON ?= python3
VENV ?= .venv$(if $(PADDLE_VERSION),-paddle$(PADDLE_VERSION))
PADDLE_VERSION ?=
PY := $(VENV)/bin/python

.PHONY: test venv clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	@if [ -n "$(PADDLE_VERSION)" ]; then $(PY) -m pip install -q "paddlepaddle==$(PADDLE_VERSION)"; fi
	touch $@

venv: $(VENV)/.installed

# make test PADDLE_VERSION=2.6.2: the suite on another Paddle line, in its own .venv-paddle2.6.2.
test: venv
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache
