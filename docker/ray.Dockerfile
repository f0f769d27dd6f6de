# syntax=docker/dockerfile:1
# slmops Ray image for the KubeRay RayCluster (head and workers): Ray's own image
# (bash, wget for KubeRay's probes, user `ray` uid 1000) plus the slmops package,
# so Ray jobs run `python -m slmops.core.job_entry <stage>`. The Ray version
# must match constraints.txt. Build from the repository root:
#   docker build -f docker/ray.Dockerfile -t ghcr.io/slmops/slmops-ray:0.1.0 .
# CUDA variant for GPU worker groups (training):
#   docker build -f docker/ray.Dockerfile --build-arg RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu \
#     --build-arg TORCH_INDEX_URL=https://pypi.org/simple -t ghcr.io/slmops/slmops-ray-cuda:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-cpu

# The slmops wheel, built apart so the Ray stage installs it without a writable source tree.
FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY services ./services
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM ${RAY_IMAGE}
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="slmops-ray" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/tmp/huggingface \
    SLMOPS_JOB_PYTHON=python
USER 1000:100
RUN --mount=type=bind,from=wheel,source=/wheels,target=/tmp/wheels \
    --mount=type=bind,from=wheel,source=/src/constraints.txt,target=/tmp/constraints.txt \
    set -- /tmp/wheels/slmops-*.whl \
 && pip install -c /tmp/constraints.txt --extra-index-url "${TORCH_INDEX_URL}" "$1[cluster]"
WORKDIR /home/ray
