# slmops evaluation service: gRPC on 50055, with grpc.health.v1.Health for Kubernetes probes.
# A control-plane image with no torch: it records evaluations and submits them to Ray;
# the evaluation itself runs in a Ray job on the slmops-ray image.
# Build from the repository root, after the base image:
#   docker build -f docker/evaluation.Dockerfile -t ghcr.io/slmops/slmops-evaluation:0.1.0 .
ARG BASE_IMAGE=ghcr.io/slmops/slmops-base-control:0.1.0
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="slmops-evaluation"
ENV OTEL_SERVICE_NAME=slmops-evaluation
EXPOSE 50055
USER 10001:10001
# --host 0.0.0.0: the default bind address is the host part of SLMOPS_EVALUATION_ADDR, a client-side name in a cluster.
CMD ["python", "-m", "slmops.evaluation", "--host", "0.0.0.0", "--port", "50055"]
