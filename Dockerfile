# t5ort serve on CPU: the bundled English-to-German numbers model by default, or your export mounted at /models.
#
#   docker build -t t5ort .
#   docker run --rm -p 8000:8000 -e T5ORT_API_KEY=change-me t5ort
#   docker run --rm -p 8000:8000 -v $PWD/out_dir:/models/mine:ro --env-file keys.env t5ort /models/mine --threads 4
#
# The image runs as an unprivileged user; its HEALTHCHECK asks /ready. Arguments after the image name replace
# the default CMD (the model directory, then any `t5ort serve` flags). docs/deploy/ has a Kubernetes example.

ARG PYTHON=3.12

FROM python:${PYTHON}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/t5ort
WORKDIR /src
COPY pyproject.toml README.md ./
COPY t5ort ./t5ort
# [serve] only: numpy, onnxruntime, tokenizers, fastapi, uvicorn, prometheus-client (no torch)
RUN /opt/t5ort/bin/pip install ".[serve]" \
 && mkdir -p /models \
 && cp -r "$(/opt/t5ort/bin/python -c 'from t5ort.demo import bundled; print(bundled("onnx"))')" /models/numbers

FROM python:${PYTHON}-slim
ENV PATH=/opt/t5ort/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin t5ort
COPY --from=build /opt/t5ort /opt/t5ort
COPY --from=build /models /models
USER 10001:10001
EXPOSE 8000
# 0.0.0.0: reachable through the container's published port. Without a key t5ort serve warns at start; give one
# with T5ORT_API_KEY or --api-key-file (a mounted secret).
ENTRYPOINT ["t5ort", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD ["/models/numbers", "--model-name", "numbers"]
# /ready: 200 once the model is loaded, 503 while loading or draining (urlopen raises on 503). Serving https
# (--ssl-*)? Ask https://127.0.0.1:8000/ready with the CA instead, or rely on your orchestrator's probes.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=2)"]
