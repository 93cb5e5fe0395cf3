# make run  : install into .venv, start a local upstream and `edge serve` on config/quickstart
# make test : install into .venv (with test extras), redis-server and systemd-analyze when missing, run the whole suite
#             (the install compiles edge/worker/proto/h1parser.pyx and edge/worker/heads.pyx:
#             gcc and the Python headers are installed when missing)
# make bench: wrk side by side with nginx and haproxy, every scenario (installs wrk, nginx,
#             haproxy and matplotlib when missing); BENCH_ARGS passes options to python -m bench
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: run test bench check clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python setup.cfg setup.py pyproject.toml edge/worker/proto/h1parser.pyx edge/worker/proto/llhttp.pxd \
	edge/worker/heads.pyx
	@command -v gcc >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc >/dev/null)
	@$(BIN)/python -c "import os, sysconfig; raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-dev >/dev/null)
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	@echo "upstream on 127.0.0.1:9000, gateway on :8080, admin on 127.0.0.1:8877"
	@echo "try: curl -i localhost:8080/backend/"
	$(BIN)/python config/quickstart/upstream.py 9000 & UP=$$!; \
	trap 'kill $$UP 2>/dev/null' EXIT INT TERM; \
	$(BIN)/edge serve -c config/quickstart --workers 2

test: $(STAMP)
	@command -v redis-server >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null)
	@command -v systemd-analyze >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null)
	$(BIN)/python -m pytest -q

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	@command -v wrk >/dev/null && command -v nginx >/dev/null && command -v haproxy >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq wrk nginx-light haproxy)
	$(BIN)/python -m bench.micro
	$(BIN)/python -m bench $(BENCH_ARGS)

check: $(STAMP)
	$(BIN)/edge check config/quickstart

clean:
	rm -rf $(VENV) *.egg-info
