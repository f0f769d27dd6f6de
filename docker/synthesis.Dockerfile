# slmops synthesis service: gRPC on 50051, with grpc.health.v1.Health for Kubernetes probes.
# Built on slmops-base, the machine-learning stack (CPU torch, ORT GenAI, Olive).
# Build from the repository root, after the base image:
#   docker build -f docker/synthesis.Dockerfile -t ghcr.io/slmops/slmops-synthesis:0.1.0 .
ARG BASE_IMAGE=ghcr.io/slmops/slmops-base:0.1.0
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="slmops-synthesis"
ENV OTEL_SERVICE_NAME=slmops-synthesis
EXPOSE 50051
USER 10001:10001
# --host 0.0.0.0: the default bind address is the host part of SLMOPS_SYNTHESIS_ADDR, a client-side name in a cluster.
CMD ["python", "-m", "slmops.synthesis", "--host", "0.0.0.0", "--port", "50051"]
