"""The conversion job's configuration: the pydantic models that are the spec.

The constraints live on the models, so the service at `Create`
(conversion/spec.py turns the protobuf into these) and the Ray job
(conversion/job.py) validate with the same models.

What the conversion makes, by execution provider (ONNX Runtime GenAI 0.13.2
through Olive 0.13): CPU: INT4, INT8, FP32; CUDA: INT4, FP16, BF16, FP32;
DML: INT4, FP16, FP32. INT8 is the builder's FP32 graph quantized by Olive's
8-bit RTN pass (the builder has no INT8 of its own); it is checked on the CPU.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from slmops.conversion.adapters import AdapterRef
from slmops.conversion.verify import Thresholds

SUPPORTED = {
    "cpu": ("int4", "int8", "fp32"),
    "cuda": ("int4", "fp16", "bf16", "fp32"),
    "dml": ("int4", "fp16", "fp32"),
}
# Why a precision is not offered for a provider, as measured (FACTS.md).
UNSUPPORTED = {
    ("cpu", "fp16"): "ONNX Runtime GenAI 0.13.2 loads the builder's FP16 CPU graph but fails its "
    'second decode step ("Shape mismatch attempting to re-use buffer")',
    ("cpu", "bf16"): "ONNX Runtime has no BF16 kernels for these operators on the CPU",
    ("cuda", "int8"): "the 8-bit path is built and verified on the CPU only",
    ("dml", "int8"): "the 8-bit path is built and verified on the CPU only",
    ("dml", "bf16"): "the model builder makes BF16 for CUDA only",
}


class Resources(BaseModel):
    """What the conversion's Ray task reserves."""

    num_cpus: float = Field(1.0, gt=0.0, le=1024.0)
    num_gpus: float = Field(0.0, ge=0.0, le=64.0)
    memory_bytes: int = Field(0, ge=0)  # 0: unbounded


class VerifySettings(BaseModel):
    """How the converted model is checked against its source (see conversion/verify.py)."""

    thresholds: Thresholds
    new_tokens: int = Field(default=16, ge=1, le=256)
    max_prompts: int = Field(default=8, ge=1, le=256)


class ConversionConfig(BaseModel):
    """Everything a conversion job needs, after validation and defaults."""

    model_uri: str
    execution_provider: Literal["cpu", "cuda", "dml"] = "cpu"
    precision: Literal["int4", "int8", "fp16", "fp32", "bf16"] = "int4"
    extra_options: dict[str, str] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    output_uri: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    verification: VerifySettings | None = None  # None: the precision's defaults
    foundry_local_package: bool = False  # also write foundry/<publisher>/<name>/ for Foundry Local
    adapters: list[AdapterRef] = Field(default_factory=list)
    merge_adapters: bool = False  # merge the one adapter into the base before converting

    @field_validator("precision")
    @classmethod
    def _provider_builds_it(cls, precision: str, info: ValidationInfo) -> str:
        provider = info.data.get("execution_provider")
        if provider is not None and precision not in SUPPORTED[provider]:
            choices = ", ".join(p.upper() for p in SUPPORTED[provider])
            why = UNSUPPORTED.get((provider, precision), "not one of its builds")
            raise ValueError(
                f"{precision.upper()} is not available for {provider.upper()} ({why}); use one of {choices}"
            )
        return precision

    @model_validator(mode="after")
    def _cuda_has_a_gpu(self) -> ConversionConfig:
        if self.execution_provider == "cuda" and self.resources.num_gpus == 0:
            self.resources.num_gpus = 1.0  # the builder and the check run where the GPU is
        return self
