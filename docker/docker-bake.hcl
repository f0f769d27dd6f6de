# Builds every slmops image in dependency order with docker buildx. From the repository root:
#   docker buildx bake -f docker/docker-bake.hcl                 # CPU images
#   docker buildx bake -f docker/docker-bake.hcl cuda            # CUDA variants
#   REGISTRY=registry.example.com/ml TAG=0.1.0 docker buildx bake -f docker/docker-bake.hcl --push all
# Multi-arch (needs a builder with qemu binfmt or native nodes for each platform; a
# multi-platform result must be pushed, the local image store holds one platform):
#   PLATFORMS=linux/amd64,linux/arm64 REGISTRY=registry.example.com/ml docker buildx bake \
#     -f docker/docker-bake.hcl --push
# Images built FROM another name it through a named build context, so a bake
# build never pulls a stale base from the registry. Without a Docker engine,
# `make images` builds the same images with buildah (scripts/images.py).

variable "REGISTRY" {
  default = "ghcr.io/slmops"
}

variable "TAG" {
  default = "0.1.0"
}

# Comma-separated target platforms, e.g. "linux/amd64,linux/arm64".
variable "PLATFORMS" {
  default = "linux/amd64"
}

# The Debian-based Python 3.11 image every build starts from.
variable "PYTHON_IMAGE" {
  default = "python:3.11-slim"
}

group "default" {
  targets = ["base-control", "base", "synthesis", "training", "conversion", "serving", "evaluation",
             "pipeline", "predictor", "ray"]
}

group "cuda" {
  targets = ["base-cuda", "predictor-cuda", "ray-cuda"]
}

group "all" {
  targets = ["default", "cuda"]
}

target "_common" {
  context   = "."
  platforms = split(",", PLATFORMS)
  args = {
    VERSION      = "${TAG}"
    PYTHON_IMAGE = "${PYTHON_IMAGE}"
  }
}

# The machine-learning stack (CPU torch): synthesis, training, conversion, predictor, ray.
target "base" {
  inherits   = ["_common"]
  dockerfile = "docker/base.Dockerfile"
  args       = { EXTRAS = "ml,cluster" }
  tags       = ["${REGISTRY}/slmops-base:${TAG}"]
}

# The control plane: no torch (pipeline, serving, evaluation).
target "base-control" {
  inherits   = ["_common"]
  dockerfile = "docker/base.Dockerfile"
  args       = { EXTRAS = "cluster" }
  tags       = ["${REGISTRY}/slmops-base-control:${TAG}"]
}

target "base-cuda" {
  inherits = ["base"]
  args = {
    EXTRAS          = "ml,cluster"
    TORCH_INDEX_URL = "https://pypi.org/simple"
  }
  tags = ["${REGISTRY}/slmops-base-cuda:${TAG}"]
}

target "ml" {
  name       = svc
  matrix     = { svc = ["synthesis", "training", "conversion"] }
  inherits   = ["_common"]
  dockerfile = "docker/${svc}.Dockerfile"
  contexts   = { slmops-base = "target:base" }
  args       = { BASE_IMAGE = "slmops-base" }
  tags       = ["${REGISTRY}/slmops-${svc}:${TAG}"]
}

target "control" {
  name       = svc
  matrix     = { svc = ["serving", "evaluation", "pipeline"] }
  inherits   = ["_common"]
  dockerfile = "docker/${svc}.Dockerfile"
  contexts   = { slmops-base-control = "target:base-control" }
  args       = { BASE_IMAGE = "slmops-base-control" }
  tags       = ["${REGISTRY}/slmops-${svc}:${TAG}"]
}

target "predictor" {
  inherits   = ["_common"]
  dockerfile = "docker/predictor.Dockerfile"
  contexts   = { slmops-base = "target:base" }
  args       = { BASE_IMAGE = "slmops-base" }
  tags       = ["${REGISTRY}/slmops-predictor:${TAG}"]
}

target "predictor-cuda" {
  inherits   = ["_common"]
  dockerfile = "docker/predictor-cuda.Dockerfile"
  contexts   = { slmops-base-cuda = "target:base-cuda" }
  args       = { BASE_IMAGE = "slmops-base-cuda" }
  tags       = ["${REGISTRY}/slmops-predictor-cuda:${TAG}"]
}

target "ray" {
  inherits   = ["_common"]
  dockerfile = "docker/ray.Dockerfile"
  contexts   = { slmops-base = "target:base" }
  args       = { BASE_IMAGE = "slmops-base" }
  tags       = ["${REGISTRY}/slmops-ray:${TAG}"]
}

target "ray-cuda" {
  inherits   = ["_common"]
  dockerfile = "docker/ray.Dockerfile"
  contexts   = { slmops-base-cuda = "target:base-cuda" }
  args       = { BASE_IMAGE = "slmops-base-cuda" }
  tags       = ["${REGISTRY}/slmops-ray-cuda:${TAG}"]
}
