# syntax=docker/dockerfile:1
# slmops base images: Python 3.11, the slmops package and its pinned dependencies
# in the virtual environment /opt/slmops, a non-root user (uid 10001). Two
# builds of this file are the bases of every other image:
#   slmops-base          EXTRAS=ml,cluster  the machine-learning stack (CPU torch, ORT GenAI,
#                                           Olive, Ray Train): synthesis, training, conversion,
#                                           the predictor and the Ray image
#   slmops-base-control  EXTRAS=cluster     no torch: the control-plane services
#                                           (pipeline, serving, evaluation)
# Build from the repository root:
#   docker build -f docker/base.Dockerfile -t ghcr.io/slmops/slmops-base:0.1.0 .
#   docker build -f docker/base.Dockerfile --build-arg EXTRAS=cluster \
#     -t ghcr.io/slmops/slmops-base-control:0.1.0 .
# CUDA variant (PyPI's torch wheel is the CUDA build; the driver comes from the node):
#   docker build -f docker/base.Dockerfile --build-arg TORCH_INDEX_URL=https://pypi.org/simple \
#     -t ghcr.io/slmops/slmops-base-cuda:0.1.0 .
# PYTHON_IMAGE is any Debian-based image with python3 3.11 and its venv module
# (scripts/make_base_image.sh makes one where no registry can be reached).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
# Where torch comes from: the CPU wheel index by default (a plain torch is a multi-GB CUDA build).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# The project's extras to install (see pyproject.toml): ml, cluster.
ARG EXTRAS=ml,cluster
# Unset unless given: a local wheel folder (bind-mounted for the build) and the CA
# bundle of a TLS-intercepting proxy, for builds that reach PyPI only that way.
ARG PIP_FIND_LINKS
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/slmops
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY services ./services
RUN /opt/slmops/bin/pip install -c constraints.txt --extra-index-url "${TORCH_INDEX_URL}" ".[${EXTRAS}]"

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG EXTRAS=ml,cluster
LABEL org.opencontainers.image.title="slmops-base" \
      org.opencontainers.image.description="slmops: small language model operations platform" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.slmops.extras="${EXTRAS}"
RUN groupadd --system --gid 10001 slmops \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/slmops --create-home \
      --shell /usr/sbin/nologin slmops \
 && mkdir -p /var/lib/slmops \
 && chown 10001:10001 /var/lib/slmops
COPY --from=build /opt/slmops /opt/slmops
# SLMOPS_DATA_DIR is a volume in Kubernetes (the root filesystem is read-only there).
ENV PATH=/opt/slmops/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/slmops \
    HF_HOME=/tmp/huggingface \
    SLMOPS_DATA_DIR=/var/lib/slmops \
    SLMOPS_HOST=0.0.0.0 \
    SLMOPS_JOB_PYTHON=python
WORKDIR /home/slmops
USER 10001:10001
CMD ["slmops", "--help"]
