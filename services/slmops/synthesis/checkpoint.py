"""Answers committed as they arrive, so a synthesis job that dies continues where it stopped.

Beside the dataset's output folder, `.<name>.parts/` holds `config.json` (the
job's configuration) and one JSONL file per batch of answers the job received
(`part-<first prompt>-<count>.jsonl`: written under a temporary name and
renamed, so a part is whole or absent). A rerun of the same configuration reads
the parts back and asks the teacher only for the prompts no part holds; a
different configuration starts afresh. The folder is removed once the dataset
is sealed.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import fsspec

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"


class Checkpoint:
    def __init__(self, output_uri: str, config: dict[str, Any]):
        self.fs, root = fsspec.core.url_to_fs(output_uri)
        parent, _, name = root.rstrip("/").rpartition("/")
        self.dir = f"{parent}/.{name}.parts"
        self.config = json.dumps(config, sort_keys=True)

    def load(self) -> dict[int, dict[str, Any]]:
        """{prompt index: result} of every committed part; {} (and a fresh folder) for another config."""
        config_path = f"{self.dir}/{CONFIG_FILE}"
        if self.fs.exists(config_path):
            with self.fs.open(config_path, "r", encoding="utf-8") as fh:
                if fh.read() == self.config:
                    return self._read_parts()
            log.warning("answers in %s are from another configuration; starting afresh", self.dir)
            self.fs.rm(self.dir, recursive=True)
        self.fs.makedirs(self.dir, exist_ok=True)
        with self.fs.open(config_path, "w", encoding="utf-8") as fh:
            fh.write(self.config)
        return {}

    def _read_parts(self) -> dict[int, dict[str, Any]]:
        found: dict[int, dict[str, Any]] = {}
        for path in sorted(self.fs.glob(f"{self.dir}/part-*.jsonl")):
            with self.fs.open(path, "r", encoding="utf-8") as fh:
                for line in fh:
                    entry = json.loads(line)
                    found[int(entry["index"])] = entry["result"]
        return found

    def commit(self, answers: list[tuple[int, dict[str, Any]]]) -> None:
        """Keep a batch of answers for good (all of it, or nothing if this process dies meanwhile)."""
        if not answers:
            return
        first = min(index for index, _ in answers)
        final = f"{self.dir}/part-{first:09d}-{len(answers)}.jsonl"
        temp = f"{self.dir}/.tmp-{uuid.uuid4().hex[:8]}"
        with self.fs.open(temp, "w", encoding="utf-8") as fh:
            for index, result in answers:
                fh.write(json.dumps({"index": index, "result": result}, ensure_ascii=False) + "\n")
        self.fs.mv(temp, final)

    def clear(self) -> None:
        if self.fs.exists(self.dir):
            self.fs.rm(self.dir, recursive=True)
