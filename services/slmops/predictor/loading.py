"""Which engine serves a model folder: ONNX Runtime GenAI or transformers.

`load_engine(model_dir)` picks ORT GenAI when the folder holds a
`genai_config.json` (the output of the conversion stage), else a Hugging Face
checkpoint run by transformers. Each engine module is imported only when its
runtime is picked, so a predictor serving ONNX never imports torch.
"""

from __future__ import annotations

from pathlib import Path

from slmops.core.errors import InvalidSpec
from slmops.predictor.engines import Engine


def load_engine(
    model_dir: str | Path, *, threads: int = 0, adapters: dict[str, Path] | None = None
) -> Engine:
    """ORT GenAI for a folder with genai_config.json, else transformers.

    threads: intra-op threads (0: every core this process may use).
    adapters: extra {name: path} besides those found in the folder's `adapters/`.
    """
    path = Path(model_dir)
    if not path.is_dir():
        raise InvalidSpec("model_dir", f"{str(model_dir)!r} is not a folder")
    if (path / "genai_config.json").is_file():
        from slmops.predictor.ort_engine import OrtGenaiEngine

        return OrtGenaiEngine(path, threads=threads, adapters=adapters)
    if (path / "config.json").is_file():
        from slmops.predictor.hf_engine import TransformersEngine

        return TransformersEngine(path, threads=threads, adapters=adapters)
    raise InvalidSpec(
        "model_dir",
        f"{str(model_dir)!r} holds neither genai_config.json (ONNX Runtime GenAI) "
        "nor config.json (Hugging Face checkpoint)",
    )
