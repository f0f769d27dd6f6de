# slmops training service: gRPC on 50052, with grpc.health.v1.Health for Kubernetes probes.
# Built on slmops-base, the machine-learning stack (CPU torch, ORT GenAI, Olive).
# Build from the repository root, after the base image:
#   docker build -f docker/training.Dockerfile -t ghcr.io/slmops/slmops-training:0.1.0 .
ARG BASE_IMAGE=ghcr.io/slmops/slmops-base:0.1.0
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="slmops-training"
ENV OTEL_SERVICE_NAME=slmops-training
EXPOSE 50052
USER 10001:10001
# --host 0.0.0.0: the default bind address is the host part of SLMOPS_TRAINING_ADDR, a client-side name in a cluster.
CMD ["python", "-m", "slmops.training", "--host", "0.0.0.0", "--port", "50052"]
