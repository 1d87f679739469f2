# syntax=docker/dockerfile:1
# Switchboard's images, from one file:
#   docker build --target functions -t switchboard .        the HTTP functions, migrations,
#                                                           the simulator (the default target)
#   docker build --target flows -t switchboard-flows .      the same plus Prefect, the
#                                                           flows' extras and Prefect's
#                                                           Kubernetes worker
# The package is installed into a virtual environment in a throwaway stage; the images get
# only that environment: no compilers, no dev or test dependencies, no source tree. They
# run as an unprivileged user and check their own health.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY functions ./functions
COPY flows ./flows
RUN python -m venv /opt/switchboard \
    && /opt/switchboard/bin/pip install --no-cache-dir .

FROM build AS build-flows
# kubernetes: the Prefect worker of a Kubernetes work pool (deploy/helm/switchboard).
RUN /opt/switchboard/bin/pip install --no-cache-dir ".[flows,kubernetes]"

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/switchboard/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SWITCHBOARD_HOST=0.0.0.0 \
    SWITCHBOARD_PORT=8080 \
    SWITCHBOARD_LOG_FORMAT=json
RUN groupadd --system --gid 10001 switchboard \
    && useradd --system --uid 10001 --gid switchboard --home-dir /home/switchboard \
       --create-home --shell /usr/sbin/nologin switchboard
WORKDIR /home/switchboard
USER 10001:10001

FROM runtime AS flows
COPY --from=build-flows /opt/switchboard /opt/switchboard
# Healthy while the Prefect API the flows report to answers.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; r.urlopen(os.environ['PREFECT_API_URL'].rstrip('/') + '/health', timeout=3)"]
CMD ["switchboard", "flows", "serve"]

FROM runtime AS functions
COPY --from=build /opt/switchboard /opt/switchboard
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; r.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SWITCHBOARD_PORT', '8080'), timeout=2)"]
CMD ["switchboard", "serve", "--workers", "2"]
