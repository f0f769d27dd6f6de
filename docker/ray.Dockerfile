# slmops Ray image for the KubeRay RayCluster (head and workers): slmops-base (the
# slmops package with the machine-learning stack and Ray's own dependencies, so Ray
# jobs run `python -m slmops.core.jobs.entry <stage>`), plus what KubeRay expects of
# a Ray image: bash, wget for its probes, and the user `ray` (uid 1000, gid 100).
# The Ray version is pinned in constraints.txt, so head, workers and the services'
# Jobs API clients agree. Build from the repository root, after the base image:
#   docker build -f docker/ray.Dockerfile -t ghcr.io/slmops/slmops-ray:0.1.0 .
# CUDA variant for GPU worker groups (training), on the CUDA base:
#   docker build -f docker/ray.Dockerfile --build-arg BASE_IMAGE=ghcr.io/slmops/slmops-base-cuda:0.1.0 \
#     -t ghcr.io/slmops/slmops-ray-cuda:0.1.0 .
ARG BASE_IMAGE=ghcr.io/slmops/slmops-base:0.1.0
FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="slmops-ray" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 0:0
# wget follows the Debian release of the base image; pinning it would break with every point release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 1000 --gid 100 --home-dir /home/ray --create-home --shell /bin/bash ray
ENV HOME=/home/ray \
    HF_HOME=/tmp/huggingface \
    SLMOPS_JOB_PYTHON=python
WORKDIR /home/ray
USER 1000:100
CMD ["ray", "--help"]
