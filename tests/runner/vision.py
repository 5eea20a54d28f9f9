"""The tiny Gemma 3 vision model for the runner's image tests: where its files are, the chat prompt
the test asset's README uses, more test images (PNGs drawn here), and a reference greedy run
through llama-cpp-python's own mtmd path (``mtmd_helper_eval_chunks``), independent of pollama."""

from __future__ import annotations

import ctypes
import os
import struct
import zlib
from pathlib import Path

import llama_cpp
from llama_cpp import mtmd_cpp as mtmd

MODEL_FILE = "tiny-gemma3-vision-f16.gguf"
PROJECTOR_FILE = "mmproj-tiny-gemma3-vision-f16.gguf"
MARKER = "<__media__>"
PROMPT = "<start_of_turn>user\n{question}{media}<end_of_turn>\n<start_of_turn>model\n"
QUESTION = "What is in this image?"
IMAGE_EMBEDDINGS = 16
"""Every image becomes 16 embeddings with this projector..."""
IMAGE_PROMPT_TOKENS = IMAGE_EMBEDDINGS + 2
"""...between ``<start_of_image>`` and ``<end_of_image>``, which mtmd adds around each marker."""


def vision_dir() -> Path:
    """The folder with the model, projector and PNGs.

    Looked up in ``$POLLAMA_VISION_DIR``, then ``../shared/testdata/vision`` next to the checkout
    (where the project keeps the test assets), then the copy in ``tests/data/vision``.
    """
    repo = Path(__file__).resolve().parents[2]
    places = [Path(p) for p in [os.environ.get("POLLAMA_VISION_DIR", "")] if p]
    places += [repo.parent / "shared" / "testdata" / "vision", repo / "tests" / "data" / "vision"]
    for place in places:
        if (place / MODEL_FILE).is_file() and (place / PROJECTOR_FILE).is_file():
            return place
    raise FileNotFoundError(f"the tiny vision model is not in {', '.join(map(str, places))}")


def prompt(question: str = QUESTION, images: int = 1) -> str:
    """The chat prompt with ``images`` markers after the question."""
    return PROMPT.format(question=question, media=MARKER * images)


def png(width: int, height: int, pixel: object) -> bytes:
    """A truecolour PNG whose pixel (x, y) is ``pixel(x, y)`` → (r, g, b)."""
    rows = b"".join(
        b"\x00" + b"".join(bytes(pixel(x, y)) for x in range(width))  # type: ignore[operator]
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def sample_images() -> dict[str, bytes]:
    """Four different images: the two asset PNGs and two drawn here."""
    folder = vision_dir()
    return {
        "shapes": (folder / "shapes.png").read_bytes(),
        "stripes": (folder / "stripes.png").read_bytes(),
        "gradient": png(40, 40, lambda x, y: (x * 6, y * 6, 128)),
        "checker": png(32, 32, lambda x, y: (255, 255, 255) if (x // 8 + y // 8) % 2 else (200, 0, 50)),
    }


def reference_tokens(text: str, images: list[bytes], n_predict: int, *, n_ctx: int = 1024) -> tuple[list[int], int]:
    """Greedy tokens and prompt token count from llama-cpp-python's low-level mtmd path, in a
    context of its own (the calls of the asset's ``example.py``)."""
    folder = vision_dir()
    llama_cpp.llama_backend_init()
    model = llama_cpp.llama_model_load_from_file(
        str(folder / MODEL_FILE).encode(), llama_cpp.llama_model_default_params()
    )
    vocab = llama_cpp.llama_model_get_vocab(model)
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_threads, cparams.n_threads_batch = n_ctx, 512, 2, 2
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    mparams = mtmd.mtmd_context_params_default()
    mparams.use_gpu, mparams.n_threads, mparams.print_timings = False, 2, False
    mctx = mtmd.mtmd_init_from_file(str(folder / PROJECTOR_FILE).encode(), model, mparams)
    sampler = llama_cpp.llama_sampler_init_greedy()
    bitmaps = []
    chunks = mtmd.mtmd_input_chunks_init()
    try:
        for data in images:
            buf = (ctypes.c_uint8 * len(data)).from_buffer(bytearray(data))
            bitmaps.append(mtmd.mtmd_helper_bitmap_init_from_buf(mctx, buf, len(data), False))
            assert bitmaps[-1] is not None
        encoded = text.encode()
        inp = mtmd.mtmd_input_text()
        inp.text, inp.text_len, inp.add_special, inp.parse_special = encoded, len(encoded), True, True
        arr = (mtmd.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
        assert mtmd.mtmd_tokenize(mctx, chunks, ctypes.byref(inp), arr, len(bitmaps)) == 0
        n_prompt = int(mtmd.mtmd_helper_get_n_tokens(chunks))
        n_past = llama_cpp.llama_pos(0)
        assert mtmd.mtmd_helper_eval_chunks(mctx, ctx, chunks, 0, 0, 512, True, ctypes.byref(n_past)) == 0
        out: list[int] = []
        for _ in range(n_predict):
            token = int(llama_cpp.llama_sampler_sample(sampler, ctx, -1))
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                break
            out.append(token)
            batch = llama_cpp.llama_batch_get_one((llama_cpp.llama_token * 1)(token), 1)
            assert llama_cpp.llama_decode(ctx, batch) == 0
        return out, n_prompt
    finally:
        mtmd.mtmd_input_chunks_free(chunks)
        for bitmap in bitmaps:
            mtmd.mtmd_bitmap_free(bitmap)
        llama_cpp.llama_sampler_free(sampler)
        mtmd.mtmd_free(mctx)
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
