"""Write the demo pipeline's inputs under examples/demo/ (committed; rerun after changing demo/task.py).

    .venv/bin/python scripts/make_demo_inputs.py

teacher-config/: the teacher's shape (config.json) and a byte-level tokenizer, no weights (the
pipeline's teacher stage starts from fresh weights); ground-truth/: the teacher's training data;
prompts.jsonl: what the teacher answers for the student; held-out.jsonl: evaluation prompts;
chat-ground-truth/ and chat-held-out.jsonl: the same sets as chat records, for the chat variant.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from slmops.demo import task
from slmops.testing.tiny import build_model, train_tokenizer

KEEP = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json")  # fmt: skip


def main(out: Path) -> None:
    sets = task.demo_sets()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = train_tokenizer(
            task.tokenizer_corpus(), Path(tmp) / "tokenizer", task.TOKENIZER_VOCAB_SIZE
        )
        model = build_model(Path(tmp) / "teacher", tokenizer, seed=task.SEED, **task.TEACHER_SHAPE)
        config_dir = out / "teacher-config"
        shutil.rmtree(config_dir, ignore_errors=True)
        config_dir.mkdir(parents=True)
        for name in KEEP:
            if (model / name).exists():
                shutil.copy2(model / name, config_dir / name)
    task.write_dataset(sets["teacher_train"], sets["teacher_validation"], out / "ground-truth")
    task.write_prompts(sets["synthesis"], out / "prompts.jsonl")
    task.write_prompts(sets["eval"], out / "held-out.jsonl")
    task.write_chat_dataset(sets["teacher_train"], sets["teacher_validation"], out / "chat-ground-truth")
    task.write_chat_prompts(sets["eval"], out / "chat-held-out.jsonl")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(
        Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "examples" / "demo"
    )
