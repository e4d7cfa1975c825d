PYTHON ?= python3
VENV ?= .venv$(if $(PADDLE_VERSION),-paddle$(PADDLE_VERSION))
PADDLE_VERSION ?=
PY := $(VENV)/bin/python
# The pin joins the requirements in one resolve, so pip never installs the newest Paddle first.
PADDLE_PIN := $(if $(PADDLE_VERSION),"paddlepaddle==$(PADDLE_VERSION)")

.PHONY: test demo venv clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt $(PADDLE_PIN)
	touch $@

venv: $(VENV)/.installed

# make test PADDLE_VERSION=2.6.2: the suite on another Paddle line, in its own .venv-paddle2.6.2.
test: venv
	$(PY) -m pytest -q

# The whole pipeline on scikit-learn's digits: data, 2-process training, eval, predict, export, infer.
demo: venv
	$(PY) tools/demo.py

clean:
	rm -rf $(VENV) .pytest_cache
