# attncluster serve on CPU.
#
#   docker build -t attncluster-serve .
#   docker run --rm -p 127.0.0.1:8000:8000 -v $PWD/runs:/models:ro attncluster-serve \
#       attncluster serve --host 0.0.0.0 --config /models/config.yaml --weights /models/best.pt
#
# The default command serves /models/config.yaml + /models/best.pt (mount them). Publish the port on the host's
# loopback (-p 127.0.0.1:8000:8000) unless a proxy with TLS and --token-file guard it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

# CPU PyTorch first, from the PyTorch CPU index: otherwise pip pulls the multi-GB CUDA build.
RUN pip install torch --index-url https://download.pytorch.org/whl/cpu

WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
COPY configs ./configs
RUN pip install ".[serve]"

RUN useradd --create-home --uid 10001 attncluster
USER attncluster

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"

# 0.0.0.0 is for inside the container only: the container's network namespace is private, and the port is reachable
# from outside only as `docker run -p` publishes it. Outside a container serve binds 127.0.0.1 by default.
CMD ["attncluster", "serve", "--host", "0.0.0.0", "--port", "8000", "--config", "/models/config.yaml", \
     "--weights", "/models/best.pt"]
