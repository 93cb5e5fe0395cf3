# The edge image used by config/kubernetes/: docker build -t edge:0.1.0 .
# The HTTP/1 parser is compiled (Cython over the vendored llhttp): wheels are built in the
# full image, which has a C compiler, and installed into the slim one.
FROM python:3.11 AS build
WORKDIR /src
COPY setup.cfg setup.py pyproject.toml README.md ./
COPY vendor ./vendor
COPY edge ./edge
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels && useradd --uid 8888 --no-create-home edge
USER 8888
EXPOSE 8080 8877
ENTRYPOINT ["edge"]
CMD ["serve", "--kubernetes"]
