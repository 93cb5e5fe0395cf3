# make run  : install into .venv, start a local upstream and `edge serve` on config/quickstart
# make test : install into .venv (with test extras), redis-server, systemd-analyze, h2load (nghttp2-client), openssl and curl when missing, run the whole suite
#             (the install compiles edge/worker/proto/h1parser.pyx, edge/worker/heads.pyx and
#             edge/worker/proto/h2codec.pyx: gcc, the Python headers and libnghttp2-dev are
#             installed when missing)
# make bench: wrk side by side with nginx and haproxy, every scenario (installs wrk, nginx,
#             haproxy and matplotlib when missing); BENCH_ARGS passes options to python -m bench
# make dist : edge's wheel (compiled: for this Python minor and platform) and sdist into $(DIST), offline
# make wheelhouse: every runtime dependency as a wheel into $(DIST)/wheels (from the package registry),
#             for a VM without a compiler or internet: pip install --no-index --find-links dist/wheels dist/edge-*.whl
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
DIST ?= dist

.PHONY: run test bench check clean dist wheelhouse

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python setup.cfg setup.py pyproject.toml edge/worker/proto/h1parser.pyx edge/worker/proto/llhttp.pxd \
	edge/worker/heads.pyx edge/worker/proto/h2codec.pyx edge/worker/proto/nghttp2.pxd
	@command -v gcc >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc >/dev/null)
	@$(BIN)/python -c "import os, sysconfig; raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-dev >/dev/null)
	@test -f /usr/include/nghttp2/nghttp2.h \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libnghttp2-dev >/dev/null)
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	@echo "upstream on 127.0.0.1:9000, gateway on :8080, admin on 127.0.0.1:8877"
	@echo "try: curl -i localhost:8080/backend/"
	$(BIN)/python config/quickstart/upstream.py 9000 & UP=$$!; \
	trap 'kill $$UP 2>/dev/null' EXIT INT TERM; \
	$(BIN)/edge serve -c config/quickstart --workers 2

test: $(STAMP) $(VENV)/wheelhouse/.downloaded
	@command -v redis-server >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null)
	@command -v systemd-analyze >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null)
	@command -v h2load >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client >/dev/null)
	@command -v openssl >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null)
	@command -v curl >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null)
	$(BIN)/python -m pytest -q

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	@command -v wrk >/dev/null && command -v nginx >/dev/null && command -v haproxy >/dev/null && command -v h2load >/dev/null && command -v nghttpd >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq wrk nginx-light haproxy nghttp2-client nghttp2-server)
	$(BIN)/python -m bench.micro
	$(BIN)/python -m bench $(BENCH_ARGS)

check: $(STAMP)
	$(BIN)/edge check config/quickstart

# the sdist, then the wheel built from it (so the sdist is known to build), from a copy of the
# files git does not ignore (tracked or new): no stale edge.egg-info/SOURCES.txt, build/ or .so
# of the work tree gets in, and the work tree is not written to. The build tools (build,
# setuptools, wheel, Cython) are the venv's, from the test extras: no download
dist: | $(STAMP)
	rm -f $(DIST)/edge-*.whl $(DIST)/edge-*.tar.gz
	SRC=$$(mktemp -d) && trap 'rm -rf "$$SRC"' EXIT && \
	git ls-files -z --cached --others --exclude-standard | tar --null -T - --ignore-failed-read -cf - | tar -xf - -C "$$SRC" && \
	$(BIN)/python -m build --no-isolation --outdir $(DIST) "$$SRC"

# setup.cfg's install_requires and all they need, as wheels only (the dependencies' own
# compiled wheels: manylinux, for this Python minor); make test fills $(VENV)/wheelhouse
# for tests/integration/test_dist.py, which installs from it offline
%/.downloaded: setup.cfg | $(BIN)/python
	mkdir -p $*
	$(BIN)/python -c "import configparser; c = configparser.ConfigParser(); c.read('setup.cfg'); \
		print(c['options']['install_requires'].strip())" > $*/requirements.txt
	$(BIN)/pip download -qq --only-binary :all: --dest $* -r $*/requirements.txt
	touch $@

wheelhouse: $(DIST)/wheels/.downloaded

clean:
	rm -rf $(VENV) *.egg-info
	rm -rf $(DIST)
