# Builds every slmops image in dependency order. From the repository root:
#   docker buildx bake -f docker/docker-bake.hcl                 # CPU images
#   docker buildx bake -f docker/docker-bake.hcl cuda            # CUDA variants
#   REGISTRY=registry.example.com/ml TAG=0.1.0 docker buildx bake -f docker/docker-bake.hcl --push all
# Service images name the base image through a named build context, so a bake
# build never pulls a stale base from the registry.

variable "REGISTRY" {
  default = "ghcr.io/slmops"
}

variable "TAG" {
  default = "0.1.0"
}

variable "RAY_VERSION" {
  default = "2.60.0"
}

group "default" {
  targets = ["base", "synthesis", "training", "conversion", "serving", "evaluation", "pipeline", "predictor", "ray"]
}

group "cuda" {
  targets = ["base-cuda", "predictor-cuda", "ray-cuda"]
}

group "all" {
  targets = ["default", "cuda"]
}

target "_common" {
  context   = "."
  platforms = ["linux/amd64"]
  args = {
    VERSION = "${TAG}"
  }
}

target "base" {
  inherits   = ["_common"]
  dockerfile = "docker/base.Dockerfile"
  tags       = ["${REGISTRY}/slmops-base:${TAG}"]
}

target "base-cuda" {
  inherits   = ["base"]
  args = {
    TORCH_INDEX_URL = "https://pypi.org/simple"
  }
  tags = ["${REGISTRY}/slmops-base-cuda:${TAG}"]
}

target "service" {
  name       = svc
  matrix     = { svc = ["synthesis", "training", "conversion", "serving", "evaluation", "pipeline", "predictor"] }
  inherits   = ["_common"]
  dockerfile = "docker/${svc}.Dockerfile"
  contexts   = { slmops-base = "target:base" }
  args       = { BASE_IMAGE = "slmops-base" }
  tags       = ["${REGISTRY}/slmops-${svc}:${TAG}"]
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
  args       = { RAY_IMAGE = "rayproject/ray:${RAY_VERSION}-py311-cpu" }
  tags       = ["${REGISTRY}/slmops-ray:${TAG}"]
}

target "ray-cuda" {
  inherits   = ["_common"]
  dockerfile = "docker/ray.Dockerfile"
  args = {
    RAY_IMAGE       = "rayproject/ray:${RAY_VERSION}-py311-gpu"
    TORCH_INDEX_URL = "https://pypi.org/simple"
  }
  tags = ["${REGISTRY}/slmops-ray-cuda:${TAG}"]
}
