"""Committed answers: read back by a rerun of the same configuration, dropped for another."""

from __future__ import annotations

from slmops.core import artifacts
from slmops.synthesis.checkpoint import Checkpoint


def test_parts_come_back_for_the_same_config_and_not_for_another(tmp_path):
    out = artifacts.to_uri(tmp_path / "dataset")
    first = Checkpoint(out, {"seed": 1})
    assert first.load() == {}
    first.commit([(3, {"completion": "a"}), (4, {"completion": "b"})])
    first.commit([(0, {"completion": "c", "error": "x"})])
    (tmp_path / ".dataset.parts" / ".tmp-deadbeef").write_text(
        '{"index": 9, "result": {}}\n'
    )  # died mid-write
    again = Checkpoint(out, {"seed": 1}).load()
    assert again == {3: {"completion": "a"}, 4: {"completion": "b"}, 0: {"completion": "c", "error": "x"}}
    assert Checkpoint(out, {"seed": 2}).load() == {}  # another configuration starts afresh
    assert Checkpoint(out, {"seed": 1}).load() == {}
    Checkpoint(out, {"seed": 1}).clear()
    assert not (tmp_path / ".dataset.parts").exists()
