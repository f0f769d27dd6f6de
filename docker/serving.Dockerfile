# slmops serving service: gRPC on 50054, with grpc.health.v1.Health for Kubernetes probes.
# A control-plane image with no torch: it records deployments and drives KServe
# InferenceServices through the Kubernetes API (the predictor image serves the model).
# Build from the repository root, after the base image:
#   docker build -f docker/serving.Dockerfile -t ghcr.io/slmops/slmops-serving:0.1.0 .
ARG BASE_IMAGE=ghcr.io/slmops/slmops-base-control:0.1.0
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="slmops-serving"
ENV OTEL_SERVICE_NAME=slmops-serving
EXPOSE 50054
USER 10001:10001
# --host 0.0.0.0: the default bind address is the host part of SLMOPS_SERVING_ADDR, a client-side name in a cluster.
CMD ["python", "-m", "slmops.serving", "--host", "0.0.0.0", "--port", "50054"]
