# slmops predictor, CUDA variant: the CUDA base (torch from PyPI with its CUDA
# libraries) with ONNX Runtime and ORT GenAI swapped for their CUDA builds.
# onnxruntime-gpu trails the CPU onnxruntime by a release on PyPI; ORT GenAI
# 0.13.2 needs onnxruntime >= 1.25.1, so the pair below loads together.
# Build from the repository root, after the CUDA base image:
#   docker build -f docker/predictor-cuda.Dockerfile -t ghcr.io/slmops/slmops-predictor-cuda:0.1.0 .
ARG BASE_IMAGE=ghcr.io/slmops/slmops-base-cuda:0.1.0
FROM ${BASE_IMAGE}
ARG ORT_GPU_VERSION=1.31.1
ARG ORT_GENAI_VERSION=0.13.2
# Unset unless given: the CA bundle of a TLS-intercepting proxy, for builds that reach PyPI only that way.
ARG PIP_CERT
LABEL org.opencontainers.image.title="slmops-predictor-cuda"
USER 0:0
RUN pip uninstall --yes onnxruntime onnxruntime-genai \
 && pip install --no-cache-dir --no-deps \
      "onnxruntime-gpu==${ORT_GPU_VERSION}" "onnxruntime-genai-cuda==${ORT_GENAI_VERSION}"
ENV OTEL_SERVICE_NAME=slmops-predictor \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
EXPOSE 8080
USER 10001:10001
ENTRYPOINT ["python", "-m", "slmops.predictor"]
CMD ["--model-dir", "/mnt/models", "--name", "model", "--http-port", "8080"]
