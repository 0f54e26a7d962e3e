# One image for every boxwatch program: the exporters, the detector, the webhook sink (and an
# MLflow server, since the detector extra brings mlflow). See docs/deploy.md.
#
#   docker build -t boxwatch .                              # everything (EXTRAS=all)
#   docker build -t boxwatch-exporters --build-arg EXTRAS=gpu,containers,journald .
#
# BASE_IMAGE must provide python3 (3.11+) with venv; where it lacks a C compiler and the systemd
# headers (python:3.11-slim does), the builder installs them with apt. Offline builds point pip at a
# local wheelhouse with --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=<dir or URL>.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# --------------------------------------------------------------------------- builder
FROM ${BASE_IMAGE} AS builder

# systemd-python (journald extra) compiles against libsystemd.
# hadolint ignore=DL3008
RUN if command -v gcc >/dev/null 2>&1 && pkg-config --exists libsystemd 2>/dev/null; then \
        echo "build dependencies are in the base image"; \
    else \
        apt-get update \
        && apt-get install -y --no-install-recommends gcc libc6-dev libsystemd-dev pkg-config \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# pip reads these from the environment: a mirror, or a wheelhouse for offline builds.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
ARG PIP_TRUSTED_HOST
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python3 -m venv /opt/boxwatch
WORKDIR /src

# Dependencies first, in their own layer: a source change does not reinstall them.
COPY pyproject.toml constraints.tx[t] deploy/docker/requirements.py ./
ARG EXTRAS=all
RUN touch constraints.txt \
    && python3 requirements.py pyproject.toml "${EXTRAS}" > requirements.txt \
    && /opt/boxwatch/bin/pip install --no-cache-dir -r requirements.txt -c constraints.txt

# README.md is optional here (pyproject.toml always matches, so the pattern may match nothing).
COPY pyproject.toml README.m[d] ./
COPY boxwatch/ boxwatch/
COPY exporters/ exporters/
COPY detector/ detector/
COPY stack/ stack/
RUN /opt/boxwatch/bin/pip install --no-cache-dir --no-deps . \
    && /opt/boxwatch/bin/pip check

# --------------------------------------------------------------------------- runtime
FROM ${BASE_IMAGE}

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="boxwatch" \
      org.opencontainers.image.description="Anomaly detection for GPU workstations: Prometheus exporters (GPU, containers, journal), detector and webhook sink" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/boxwatch/boxwatch" \
      org.opencontainers.image.documentation="https://github.com/boxwatch/boxwatch/blob/main/docs/deploy.md"

# A fixed UID/GID, so that host paths and Kubernetes securityContext can refer to it.
ARG BOXWATCH_UID=10001
RUN groupadd --system --gid "${BOXWATCH_UID}" boxwatch \
    && useradd --system --uid "${BOXWATCH_UID}" --gid boxwatch --no-log-init \
        --home-dir /var/lib/boxwatch --create-home --shell /usr/sbin/nologin boxwatch

COPY --from=builder /opt/boxwatch /opt/boxwatch
COPY deploy/docker/entrypoint.sh /usr/local/bin/boxwatch-entrypoint
COPY deploy/docker/healthcheck.py /usr/local/bin/boxwatch-healthcheck

ENV PATH=/opt/boxwatch/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=1

USER ${BOXWATCH_UID}:${BOXWATCH_UID}
WORKDIR /var/lib/boxwatch
# gpu, containers, journald exporters; detector; webhook sink
EXPOSE 9872 9873 9874 9875 9876

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 CMD ["boxwatch-healthcheck"]
ENTRYPOINT ["boxwatch-entrypoint"]
CMD ["boxwatch-exporter", "--help"]
