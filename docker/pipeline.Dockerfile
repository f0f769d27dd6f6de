# slmops pipeline service: gRPC on 50056, with grpc.health.v1.Health for Kubernetes probes.
# A control-plane image with no torch: it records pipeline runs and drives the stage
# services over gRPC.
# Build from the repository root, after the base image:
#   docker build -f docker/pipeline.Dockerfile -t ghcr.io/slmops/slmops-pipeline:0.1.0 .
ARG BASE_IMAGE=ghcr.io/slmops/slmops-base-control:0.1.0
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="slmops-pipeline"
ENV OTEL_SERVICE_NAME=slmops-pipeline
EXPOSE 50056
USER 10001:10001
# --host 0.0.0.0: the default bind address is the host part of SLMOPS_PIPELINE_ADDR, a client-side name in a cluster.
CMD ["python", "-m", "slmops.pipeline", "--host", "0.0.0.0", "--port", "50056"]
