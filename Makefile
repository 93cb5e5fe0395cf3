# make run  : install into .venv, start a local upstream and `edge serve` on config/quickstart
# make test : install into .venv (with test extras) and run the whole suite
# make bench: wrk side by side with nginx (installs wrk and nginx when missing)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench check clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	@echo "upstream on 127.0.0.1:9000, gateway on :8080, admin on 127.0.0.1:8877"
	@echo "try: curl -i localhost:8080/backend/"
	$(BIN)/python config/quickstart/upstream.py 9000 & UP=$$!; \
	trap 'kill $$UP 2>/dev/null' EXIT INT TERM; \
	$(BIN)/edge serve -c config/quickstart --workers 2

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	@command -v wrk >/dev/null && command -v nginx >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq wrk nginx-light)
	$(BIN)/python -m bench

check: $(STAMP)
	$(BIN)/edge check config/quickstart

clean:
	rm -rf $(VENV) *.egg-info
