# The edge image used by config/kubernetes/: docker build -t edge:0.1.0 .
FROM python:3.11-slim
WORKDIR /app
COPY setup.cfg pyproject.toml README.md ./
COPY edge ./edge
RUN pip install --no-cache-dir . && useradd --uid 8888 --no-create-home edge
USER 8888
EXPOSE 8080 8877
ENTRYPOINT ["edge"]
CMD ["serve", "--kubernetes"]
