"""The bundled model requantized to another type, made once into the data directory.

The bundled GGUF is Q4_1, a type that gets none of llama.cpp's fast CPU paths (no repacked
kernels, no llamafile sgemm). `llama_model_quantize` with `allow_requantize` turns it into Q4_0,
Q8_0 or Q4_K_M in seconds, locally: nothing is downloaded.

Each made file has a record beside it (`<file>.sha256`, JSON): its own sha256, the source's
sha256 and the type. A file whose record is missing or does not match (a crash mid-write, another
source, a changed file) is made again. Making goes through a temporary file and a rename, under
a lock file, so that processes starting together make it once and never read a partial file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import llama_cpp

from qfserve.engines.model import init_backend
from qfserve.errors import EngineUnavailable

logger = logging.getLogger(__name__)

# The types the bundled model may be turned into, by `engine.model_quant`'s names.
FTYPES = {
    "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
    "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
    "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
}
_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def quantized_path(source: Path, quant: str, folder: Path) -> Path:
    """Where `source` turned into `quant` lives: its name with the type replaced
    (`SmolLM2-135M-Instruct.Q4_1.gguf` -> `SmolLM2-135M-Instruct.Q8_0.gguf`)."""
    stem = source.name.removesuffix(".gguf")
    base, dot, _ = stem.rpartition(".")
    return folder / f"{base if dot else stem}.{quant.upper()}.gguf"


def record_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _record(source_sha: str, quant: str, sha: str) -> dict[str, str]:
    return {"sha256": sha, "source_sha256": source_sha, "quant": quant}


def is_current(path: Path, source_sha: str, quant: str) -> bool:
    """The file exists and matches its record, which names this source and type."""
    try:
        recorded = json.loads(record_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not path.is_file() or not isinstance(recorded, dict):
        return False
    if recorded.get("source_sha256") != source_sha or recorded.get("quant") != quant:
        return False
    return bool(recorded.get("sha256") == file_sha256(path))


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    with (folder / ".quantize.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_quantized(source: Path, quant: str, folder: Path, *, threads: int = 0) -> Path:
    """`source` as `quant` in `folder`: the file made before if it checks out, else made now."""
    ftype = FTYPES.get(quant)
    if ftype is None:
        raise ValueError(f"cannot requantize to {quant!r}: choose among {', '.join(FTYPES)}")
    folder.mkdir(parents=True, exist_ok=True)
    target = quantized_path(source, quant, folder)
    source_sha = file_sha256(source)
    with _locked(folder):
        if is_current(target, source_sha, quant):
            return target
        logger.info("requantizing %s to %s into %s", source, quant, target)
        record_path(target).unlink(missing_ok=True)
        partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
        try:
            _quantize_in_child(source, partial, ftype, threads)
            sha = file_sha256(partial)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        written = record_path(target).with_name(record_path(target).name + ".partial")
        written.write_text(json.dumps(_record(source_sha, quant, sha)) + "\n", encoding="utf-8")
        os.replace(written, record_path(target))
    return target


def _quantize_in_child(source: Path, target: Path, ftype: int, threads: int) -> None:
    """`quantize` in a child process: the memory llama.cpp used for it then goes back to the
    system, where in the server's own process it stayed resident (29 MB for Q8_0)."""
    command = [sys.executable, "-m", __name__, str(source), str(target), str(ftype), str(threads)]
    # Our own interpreter and module, with paths and numbers we made.
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise EngineUnavailable(f"llama.cpp could not requantize {source}: {detail}")


def quantize(source: Path, target: Path, ftype: int, *, threads: int = 0) -> None:
    """llama.cpp's `llama_model_quantize`, requantizing an already quantized file."""
    init_backend()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(
        str(source).encode("utf-8"), str(target).encode("utf-8"), params
    )
    if rc != 0:
        raise EngineUnavailable(f"llama.cpp could not requantize {source} ({rc})")


if __name__ == "__main__":
    # python -m qfserve.engines.quantize SOURCE TARGET FTYPE THREADS
    quantize(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), threads=int(sys.argv[4]))
