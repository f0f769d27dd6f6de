# slmops predictor: a KServe ModelServer for one model (ORT GenAI for ONNX folders,
# transformers for Hugging Face checkpoints) with OIP v2 and OpenAI-compatible routes
# on 8080, Prometheus /metrics, readiness at /v2/health/ready. The ClusterServingRuntime
# passes the arguments; the CMD is the standalone default (a model mounted at /mnt/models).
# Build from the repository root, after the base image:
#   docker build -f docker/predictor.Dockerfile -t ghcr.io/slmops/slmops-predictor:0.1.0 .
ARG BASE_IMAGE=ghcr.io/slmops/slmops-base:0.1.0
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="slmops-predictor"
ENV OTEL_SERVICE_NAME=slmops-predictor
EXPOSE 8080
USER 10001:10001
ENTRYPOINT ["python", "-m", "slmops.predictor"]
CMD ["--model-dir", "/mnt/models", "--name", "model", "--http-port", "8080"]
