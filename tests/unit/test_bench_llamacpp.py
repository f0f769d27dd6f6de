"""The llama.cpp comparison's parts that run without llama.cpp: the skip, the converter patch,
the commands, peak RSS; and scripts/build_peers.py's manifest and its do-nothing path.

llama.cpp itself is compiled only by `make bench-peers` (10 minutes), never here: the
converter and the binaries below are stand-ins, and each test says so.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from slmops.bench import llamacpp, registry
from slmops.bench.registry import Skipped, run_benchmarks

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["serving_decode_vs_llamacpp", "serving_ttft_vs_llamacpp", "serving_8clients_vs_llamacpp",
         "serving_rss_vs_llamacpp"]  # fmt: skip

# A stand-in for llama.cpp's `conversion` package, only as much as the patch touches: Qwen2's
# set_vocab tries sentencepiece and falls back to BPE on FileNotFoundError; unknown BPE
# pre-tokenizers raise; the writer keeps the merges it is given. Without sentencepiece
# installed the real one raises ImportError instead of FileNotFoundError.
STAND_IN_CONVERSION = """
class Writer:
    merges = None

    def add_token_merges(self, merges):
        self.merges = merges


class TextModel:
    def __init__(self, dir_model):
        self.dir_model, self.gguf_writer = dir_model, Writer()

    def get_vocab_base_pre(self, tokenizer):
        raise NotImplementedError("BPE pre-tokenizer was not recognized")

    def _set_vocab_sentencepiece(self, add_to_gguf=True):
        raise ImportError("No module named 'sentencepiece'")

    def _set_vocab_gpt2(self):
        self.pre = self.get_vocab_base_pre(None)

    def set_vocab(self):
        try:
            self._set_vocab_sentencepiece()
            return "sentencepiece", None, None
        except FileNotFoundError:
            self._set_vocab_gpt2()
            return "bpe", self.pre, self.gguf_writer.merges
"""


def _byte_tokenizer(folder: Path) -> Path:
    """The tokenizer bench/serving.py's checkpoint has: single bytes, no merges."""
    from slmops.demo import task
    from slmops.testing.tiny import train_tokenizer

    return train_tokenizer(task.tokenizer_corpus(), folder, vocab_size=task.TOKENIZER_VOCAB_SIZE)


def _build_peers_module():
    spec = importlib.util.spec_from_file_location("build_peers", ROOT / "scripts" / "build_peers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stand_in_binary(path: Path, exit_status: int = 0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\nexit {exit_status}\n")
    path.chmod(0o755)
    return str(path)


def test_without_a_build_every_comparison_is_skipped_with_how_to_build(monkeypatch, tmp_path):
    monkeypatch.setattr(llamacpp, "PEERS", tmp_path / "peers")
    logs: list[str] = []
    document = run_benchmarks(
        [registry.REGISTRY[name] for name in NAMES], tmp_path / "bench", log=logs.append
    )

    assert document["results"] == []  # no row, no made-up number
    assert [row["name"] for row in document["skipped"]] == NAMES
    assert all("make bench-peers" in row["reason"] for row in document["skipped"])
    assert json.loads((tmp_path / "bench" / "results.json").read_text())["skipped"] == document["skipped"]
    report = (tmp_path / "bench" / "report.md").read_text()
    assert "## Skipped" in report and "- serving_rss_vs_llamacpp: llama.cpp is not built" in report
    assert logs[1].startswith("bench serving_decode_vs_llamacpp: skipped: llama.cpp is not built")


def test_an_incomplete_build_is_skipped_too(tmp_path):
    info = {"llama_server": str(tmp_path / "missing"), "llama_quantize": str(tmp_path / "missing"),
            "convert_hf_to_gguf": str(tmp_path / "missing.py")}  # fmt: skip
    (tmp_path / "peers.json").write_text(json.dumps(info))
    with pytest.raises(Skipped, match="incomplete.*make bench-peers"):
        llamacpp.peers(tmp_path)


def test_a_skipped_benchmark_does_not_stop_the_others(monkeypatch, tmp_path):
    monkeypatch.setattr(registry, "REGISTRY", {})

    @registry.register("needs_a_tool")
    def needs_a_tool():
        raise Skipped("the tool is not installed")

    @registry.register("plain")
    def plain():
        return registry.Outcome(value=2.0, baseline=1.0, unit="x")

    document = run_benchmarks(registry.REGISTRY.values(), tmp_path, log=lambda _: None)
    assert [row["name"] for row in document["results"]] == ["plain"]
    assert document["skipped"] == [{"name": "needs_a_tool", "reason": "the tool is not installed"}]


def test_the_patch_sends_the_converter_down_the_bpe_path(tmp_path):
    conversion = types.ModuleType("conversion")
    exec(STAND_IN_CONVERSION, conversion.__dict__)
    bytes_only = _byte_tokenizer(tmp_path / "bytes")
    with pytest.raises(ImportError):
        conversion.TextModel(bytes_only).set_vocab()

    llamacpp.patch_converter(conversion)
    # No merges in the tokenizer: llama.cpp needs a list, so it gets one that never applies.
    assert not json.loads((bytes_only / "tokenizer.json").read_text())["model"]["merges"]
    assert conversion.TextModel(bytes_only).set_vocab() == ("bpe", "qwen2", [llamacpp.INERT_MERGE])
    assert all(len(part) > 1 for part in llamacpp.INERT_MERGE.split(" "))
    # A tokenizer with merges keeps its own.
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "merges": [["a", "b"]]}}))
    assert conversion.TextModel(merged).set_vocab() == ("bpe", "qwen2", None)


def test_the_converter_runs_patched_as_a_script_with_its_arguments(tmp_path):
    # A stand-in convert_hf_to_gguf.py beside a stand-in conversion package and a gguf-py folder,
    # laid out as in llama.cpp's source tree.
    (tmp_path / "conversion").mkdir()
    (tmp_path / "conversion" / "__init__.py").write_text(STAND_IN_CONVERSION)
    (tmp_path / "gguf-py" / "gguf").mkdir(parents=True)
    (tmp_path / "gguf-py" / "gguf" / "__init__.py").write_text("")
    script = tmp_path / "convert_hf_to_gguf.py"
    script.write_text(
        textwrap.dedent("""
        import json, sys
        import gguf
        from conversion import TextModel
        if __name__ == "__main__":
            out = sys.argv[sys.argv.index("--outfile") + 1]
            vocab = TextModel(sys.argv[1]).set_vocab()
            json.dump({"argv": sys.argv[1:], "vocab": vocab}, open(out, "w"))
    """)
    )
    out = tmp_path / "out.json"
    hf = _byte_tokenizer(tmp_path / "hf")
    cmd = llamacpp.converter_command({"convert_hf_to_gguf": str(script)}, hf, out)
    subprocess.run(cmd, check=True, cwd=tmp_path.parent)

    written = json.loads(out.read_text())
    assert written["vocab"] == ["bpe", "qwen2", [llamacpp.INERT_MERGE]]
    assert written["argv"] == [str(hf), "--outtype", "bf16", "--outfile", str(out)]


def test_the_convert_command_line_is_checked():
    assert llamacpp.main(["convert", "script.py"]) == 2


def test_commands():
    info = {"llama_server": "/p/llama-server", "llama_quantize": "/p/llama-quantize"}
    server = llamacpp.server_command(info, Path("/m/q4.gguf"), 8123)
    assert server[:3] == ["/p/llama-server", "-m", "/m/q4.gguf"]
    flags = dict(zip(server[3::2], server[4::2], strict=True))
    assert flags == {"-t": "2", "-c": "2048", "-np": "8", "--host": "127.0.0.1", "--port": "8123"}
    quantize = llamacpp.quantize_command(info, Path("/m/bf16.gguf"), Path("/m/q4.gguf"))
    assert quantize == ["/p/llama-quantize", "--pure", "/m/bf16.gguf", "/m/q4.gguf", "Q4_0", "2"]


def test_peak_rss_is_vmhwm_and_counts_children():
    own = llamacpp.peak_rss_bytes(os.getpid())
    status = Path("/proc/self/status").read_text()
    hwm = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:"))
    assert abs(own - hwm) < 64 * 2**20  # this process may grow a little between the two reads

    # A child that touches 96 MiB and waits: its peak is counted with ours.
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; b = bytearray(96 << 20); print(flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        child.stdout.readline()
        assert llamacpp.peak_rss_bytes(os.getpid()) - own > 96 * 2**20
        assert llamacpp.peak_rss_bytes(child.pid) > 96 * 2**20
    finally:
        child.stdin.close()
        child.wait(timeout=30)


def test_build_flags_reach_cmake_as_whole_arguments():
    build_peers = _build_peers_module()
    args = shlex.split(build_peers.cmake_args())  # as the sdist's setup.py reads CMAKE_ARGS
    no_amx = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    assert f"-DCMAKE_C_FLAGS={no_amx}" in args and f"-DCMAKE_CXX_FLAGS={no_amx}" in args


def test_build_peers_does_nothing_when_the_build_works(monkeypatch, tmp_path, capsys):
    build_peers = _build_peers_module()
    info = build_peers.manifest(tmp_path)
    for name in build_peers.BINARIES:  # stand-ins that answer --version
        _stand_in_binary(Path(info[name.replace("-", "_")]))
    Path(info["convert_hf_to_gguf"]).parent.mkdir(parents=True)
    Path(info["convert_hf_to_gguf"]).write_text("")
    (tmp_path / build_peers.MANIFEST).write_text(json.dumps(info))

    def no_work(*args):
        raise AssertionError("nothing should be downloaded or built")

    monkeypatch.setattr(build_peers, "download_sdist", no_work)
    monkeypatch.setattr(build_peers, "install", no_work)
    assert build_peers.main(["--dest", str(tmp_path)]) == 0
    assert f"llama_server: {info['llama_server']}" in capsys.readouterr().out
    assert llamacpp.peers(tmp_path)["llama_server"] == info["llama_server"]

    _stand_in_binary(Path(info["llama_bench"]), exit_status=1)  # usage errors are fine: it ran
    assert build_peers.works(info)
    _stand_in_binary(Path(info["llama_server"]), exit_status=127)  # as when a library fails to load
    assert not build_peers.works(info)
