# The edge image: docker build -t edge:0.1.0 .
#
# Outside a cluster the default command serves the file configuration in /etc/edge (a
# Listener on 8080, config/container/): docker run --rm -p 8080:8080 edge:0.1.0; mount your
# own over it (-v "$PWD/myconfig:/etc/edge:ro"). In a cluster, config/kubernetes/ runs it
# with args ["serve", "--kubernetes"] as uid/gid 8888 on a read-only root filesystem, with
# emptyDirs on /dev/shm (route table, counters) and /tmp: nothing else is written.
# edge is PID 1 here, no init needed: it handles SIGTERM (drain, then exit), SIGINT and
# SIGHUP itself, and reaps the orphans re-parented to it.
# tests/test_dockerfile.py runs hadolint on this file and checks it against the manifests.

# ---- build: the HTTP/1 parser is compiled (Cython over the vendored llhttp), and the full
# image has gcc and the Python headers; the HTTP/2 codec links the system's nghttp2 (its
# headers: libnghttp2-dev). edge and its dependencies go into a virtualenv that the runtime
# stage copies whole: no compiler, pip run or wheel layer there.
FROM python:3.11.13-bookworm AS build
# (nghttp2 1.52 as bookworm has it, with whatever Debian security revision is current)
RUN apt-get update \
    && apt-get install -y --no-install-recommends 'libnghttp2-dev=1.52.0-1+deb12u*' \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY setup.cfg setup.py pyproject.toml MANIFEST.in README.md ./
COPY vendor ./vendor
COPY edge ./edge
RUN python -m venv /opt/edge \
    && /opt/edge/bin/pip install --no-cache-dir /src

# ---- runtime: slim, the same Python and Debian release as the build stage (the virtualenv's
# python is /usr/local/bin/python3.11 in both; the extensions are linked against this glibc)
FROM python:3.11.13-slim-bookworm
# libnghttp2-14: the HTTP/2 codec's shared library (the slim image has none); no compiler
RUN apt-get update \
    && apt-get install -y --no-install-recommends 'libnghttp2-14=1.52.0-1+deb12u*' \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 8888 edge \
    && useradd --system --uid 8888 --gid 8888 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin edge
COPY --from=build /opt/edge /opt/edge
COPY config/container/ /etc/edge/
# PYTHONDONTWRITEBYTECODE: the root filesystem may be read-only (the .pyc files were written
# at install); the admin server on every address of the container (the manifests' value;
# anything but GET/HEAD is still answered to loopback only)
ENV PATH=/opt/edge/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EDGE_ADMIN_ADDR=0.0.0.0:8877
USER 8888:8888
EXPOSE 8080 8877
# check_ready on the admin port of EDGE_ADMIN_ADDR (loopback when it binds every address);
# urllib, as the slim image has no curl: an HTTP error or no answer exits non-zero
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; host, _, port = os.environ.get('EDGE_ADMIN_ADDR', '127.0.0.1:8877').rpartition(':'); host = host.strip('[]'); host = {'': '127.0.0.1', '0.0.0.0': '127.0.0.1', '*': '127.0.0.1', '::': '::1'}.get(host, host); host = '[' + host + ']' if ':' in host else host; urllib.request.urlopen('http://' + host + ':' + port + '/ambassador/v0/check_ready', timeout=4)"]
# SIGTERM drains for up to EDGE_DRAIN_TIMEOUT (30 s by default): give `docker stop` as long
# (docker stop -t 35, or --stop-timeout 35 at docker run)
STOPSIGNAL SIGTERM
ENTRYPOINT ["edge"]
CMD ["serve", "-c", "/etc/edge"]
