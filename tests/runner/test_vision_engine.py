"""Images in the engine, in-process, with real libmtmd and the tiny Gemma 3 vision model: images
change the output, count in the prompt, match llama-cpp-python's own mtmd path token for token, are
reused from the KV cache by content, and batch with other slots."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pollama.errors import InvalidRequest
from pollama.runner.engine import PROMPT_TOO_LONG, CompletionJob, Engine
from pollama.runner.native import (
    Context,
    ContextParams,
    MediaChunk,
    Model,
    ModelParams,
    MtmdContext,
    SamplingParams,
    image_size,
    image_token_parts,
)
from tests.runner.vision import (
    IMAGE_EMBEDDINGS,
    IMAGE_PROMPT_TOKENS,
    MODEL_FILE,
    PROJECTOR_FILE,
    png,
    prompt,
    reference_tokens,
    sample_images,
    vision_dir,
)

GREEDY = SamplingParams(temperature=0, repeat_penalty=1.0)
IMAGES = sample_images()


class CountingMtmd(MtmdContext):
    """The real projector, counting how many images it encodes (to see reuse skip the encoder)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.encoded = 0
        self.threads: list[str] = []

    def encode(self, chunk: MediaChunk) -> Any:
        self.encoded += 1
        self.threads.append(threading.current_thread().name)
        return super().encode(chunk)


@pytest.fixture(scope="module")
def model() -> Iterator[Model]:
    with Model(ModelParams(path=vision_dir() / MODEL_FILE)) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def mtmd(model: Model) -> Iterator[CountingMtmd]:
    with CountingMtmd(model, vision_dir() / PROJECTOR_FILE, n_threads=2, use_gpu=False) as projector:
        yield projector


EngineFactory = Callable[..., Engine]


@pytest.fixture
def make_engine(model: Model, mtmd: CountingMtmd) -> Iterator[EngineFactory]:
    """Fresh engines (empty KV caches) over the module's model and projector."""
    made: list[tuple[Engine, Context]] = []

    def make(parallel: int = 1, num_ctx: int = 512) -> Engine:
        ctx = Context(model, ContextParams(n_ctx=num_ctx * parallel, n_batch=256, n_seq_max=parallel, n_threads=2))
        engine = Engine(model, ctx, num_ctx=num_ctx, num_parallel=parallel, num_batch=256, mtmd=mtmd)
        engine.start()
        made.append((engine, ctx))
        return engine

    yield make
    for engine, ctx in made:
        engine.stop()
        ctx.close()


def submit(engine: Engine, text: str, images: list[bytes], num_predict: int = 8) -> tuple[threading.Event, dict]:
    """Queue a greedy job; returns (done, final event) to wait on."""
    done = threading.Event()
    final: dict = {}

    def emit(event: dict) -> None:
        if event.get("done") or "error" in event:
            final.update(event)
            done.set()

    if images:
        assert engine.mtmd is not None
        bitmaps = [engine.mtmd.bitmap(data, i + 1) for i, data in enumerate(images)]
        try:
            media = engine.mtmd.tokenize(text, bitmaps)
        finally:
            for bitmap in bitmaps:
                bitmap.close()
        job = CompletionJob(tokens=[], media=media, sampling=GREEDY, emit=emit, num_predict=num_predict)
    else:
        tokens = engine.model.tokenize(text)
        job = CompletionJob(tokens=tokens, sampling=GREEDY, emit=emit, num_predict=num_predict)
    engine.submit(job)
    return done, final


def run(engine: Engine, text: str, images: list[bytes], num_predict: int = 8) -> dict:
    done, final = submit(engine, text, images, num_predict)
    assert done.wait(60)
    assert "error" not in final, final
    return final


def test_images_change_the_answer_and_count_in_the_prompt(make_engine: EngineFactory) -> None:
    engine = make_engine()
    plain = run(engine, prompt(images=0), [])
    shapes = run(engine, prompt(), [IMAGES["shapes"]])
    stripes = run(engine, prompt(), [IMAGES["stripes"]])
    shapes_again = run(engine, prompt(), [IMAGES["shapes"]])
    assert shapes["tokens"] != stripes["tokens"]
    assert shapes["tokens"] != plain["tokens"]
    assert shapes_again["tokens"] == shapes["tokens"]
    assert plain["prompt_eval_count"] == 19
    # Each image adds its 16 embeddings plus the <start_of_image>/<end_of_image> that mtmd puts around them.
    assert shapes["prompt_eval_count"] == stripes["prompt_eval_count"] == 19 + IMAGE_PROMPT_TOKENS == 37
    two = run(engine, prompt("Compare", images=2), [IMAGES["shapes"], IMAGES["stripes"]])
    assert two["prompt_eval_count"] == len(engine.model.tokenize(prompt("Compare", images=0))) + 2 * IMAGE_PROMPT_TOKENS


def test_an_image_is_a_run_of_sixteen_pseudo_tokens(mtmd: CountingMtmd) -> None:
    bitmap = mtmd.bitmap(IMAGES["shapes"])
    try:
        media = mtmd.tokenize(prompt(), [bitmap])
    finally:
        bitmap.close()
    try:
        assert [chunk.n_tokens for chunk in media.images] == [IMAGE_EMBEDDINGS]
        start = media.images[0].start
        parts = [image_token_parts(t) for t in media.tokens[start : start + IMAGE_EMBEDDINGS]]
        assert [p[1] for p in parts if p] == list(range(IMAGE_EMBEDDINGS))
        assert len({p[0] for p in parts if p}) == 1
        assert all(t >= 0 for t in media.tokens[:start] + media.tokens[start + IMAGE_EMBEDDINGS :])
        assert len(media.tokens) == 37
    finally:
        media.close()


@pytest.mark.parametrize("name", ["shapes", "stripes"])
def test_greedy_tokens_equal_llama_cpp_pythons_mtmd_path(make_engine: EngineFactory, name: str) -> None:
    expected, n_prompt = reference_tokens(prompt(), [IMAGES[name]], 12)
    final = run(make_engine(), prompt(), [IMAGES[name]], num_predict=12)
    assert final["prompt_eval_count"] == n_prompt == 37
    assert final["tokens"] == expected


def test_two_images_equal_the_reference(make_engine: EngineFactory) -> None:
    images = [IMAGES["stripes"], IMAGES["shapes"]]
    expected, n_prompt = reference_tokens(prompt("Compare", images=2), images, 10)
    final = run(make_engine(), prompt("Compare", images=2), images, num_predict=10)
    assert (final["prompt_eval_count"], final["tokens"]) == (n_prompt, expected)


def test_second_turn_with_the_same_image_reuses_the_cache(make_engine: EngineFactory, mtmd: CountingMtmd) -> None:
    engine = make_engine(parallel=1)
    first_prompt = prompt()
    first = run(engine, first_prompt, [IMAGES["shapes"]])
    assert first["prompt_cached"] == 0
    answer = engine.model.detokenize(first["tokens"], special=True)
    follow_up = first_prompt + answer + "<end_of_turn>\n<start_of_turn>user\nAnd the colours?<end_of_turn>\n"
    follow_up += "<start_of_turn>model\n"
    encoded = mtmd.encoded
    second = run(engine, follow_up, [IMAGES["shapes"]])
    assert mtmd.encoded == encoded  # the image came from the KV cache, not the encoder
    evaluated = second["prompt_eval_count"] - second["prompt_cached"]
    assert second["prompt_cached"] >= 37  # the whole first prompt, image included
    assert evaluated < second["prompt_eval_count"] // 2
    cold = run(make_engine(parallel=1), follow_up, [IMAGES["shapes"]])
    assert cold["prompt_cached"] == 0 and mtmd.encoded == encoded + 1
    assert cold["tokens"] == second["tokens"]
    assert cold["prompt_eval_count"] == second["prompt_eval_count"]


def test_a_different_image_in_the_same_place_is_never_reused(make_engine: EngineFactory, mtmd: CountingMtmd) -> None:
    engine = make_engine(parallel=1)
    run(engine, prompt(), [IMAGES["shapes"]])
    encoded = mtmd.encoded
    other = run(engine, prompt(), [IMAGES["stripes"]])
    assert mtmd.encoded == encoded + 1
    assert other["prompt_cached"] == 14  # the text before the image (BOS ... <start_of_image>)
    assert other["tokens"] == run(make_engine(parallel=1), prompt(), [IMAGES["stripes"]])["tokens"]


def test_four_concurrent_images_equal_their_solo_answers(make_engine: EngineFactory) -> None:
    names = ["shapes", "stripes", "gradient", "checker"]
    solo = {name: run(make_engine(parallel=1), prompt(), [IMAGES[name]], 16)["tokens"] for name in names}
    assert len({tuple(tokens) for tokens in solo.values()}) == 4
    engine = make_engine(parallel=4)
    text_solo = run(make_engine(parallel=1), "<start_of_turn>user\nHello<end_of_turn>\n", [], 24)["tokens"]
    # A text-only job generating while the four image prompts arrive keeps going and is unchanged.
    text_done, text_final = submit(engine, "<start_of_turn>user\nHello<end_of_turn>\n", [], 24)
    jobs = {name: submit(engine, prompt(), [IMAGES[name]], 16) for name in names}
    for name, (done, final) in jobs.items():
        assert done.wait(60)
        assert final["tokens"] == solo[name], name
        assert final["prompt_eval_count"] == 37
    assert text_done.wait(60)
    assert text_final["tokens"] == text_solo


def test_the_vision_encoder_runs_on_the_submitting_thread(make_engine: EngineFactory, mtmd: CountingMtmd) -> None:
    mtmd.threads.clear()
    run(make_engine(), prompt("Describe", images=2), [IMAGES["gradient"], IMAGES["checker"]])
    assert mtmd.threads == [threading.current_thread().name] * 2  # not "pollama-engine": decoding goes on


def test_images_that_do_not_fit_the_context_are_refused(make_engine: EngineFactory) -> None:
    engine = make_engine(num_ctx=32)  # 37 prompt tokens: never truncated through an image
    done, final = submit(engine, prompt(), [IMAGES["shapes"]])
    assert done.wait(60)
    assert final == {"error": PROMPT_TOO_LONG, "kind": "invalid_request"}
    assert run(engine, prompt(images=0), [], 4)["prompt_eval_count"] == 19


def test_a_context_shift_past_an_image_keeps_generating(make_engine: EngineFactory) -> None:
    engine = make_engine(num_ctx=48)  # 37 prompt tokens: the shift drops the image whole, never half of it
    final = run(engine, prompt(), [IMAGES["shapes"]], num_predict=20)  # one shift, after 11 tokens
    assert (final["done_reason"], final["eval_count"], final["prompt_eval_count"]) == ("length", 20, 37)
    images_left = [t for t in engine._slots[0].cache if t < 0]
    assert len(images_left) in (0, IMAGE_EMBEDDINGS)  # here 0: keep=5 and the cut would have ended mid-image
    assert (
        run(engine, prompt(), [IMAGES["shapes"]], num_predict=8)["tokens"]
        == run(make_engine(), prompt(), [IMAGES["shapes"]], num_predict=8)["tokens"]
    )


def test_marker_and_image_counts_must_agree(mtmd: CountingMtmd) -> None:
    bitmap = mtmd.bitmap(IMAGES["shapes"])
    try:
        with pytest.raises(InvalidRequest) as none:
            mtmd.tokenize(prompt(images=0), [bitmap])
        assert str(none.value) == "the prompt has 0 image markers (<__media__>) but 1 image was sent"
        with pytest.raises(InvalidRequest) as two:
            mtmd.tokenize(prompt(images=2), [bitmap])
        assert str(two.value) == "the prompt has 2 image markers (<__media__>) but 1 image was sent"
    finally:
        bitmap.close()


def test_image_sizes_come_from_the_headers() -> None:
    assert image_size(IMAGES["shapes"]) == (64, 64)
    assert image_size(IMAGES["stripes"]) == (48, 32)
    assert image_size(png(7, 3, lambda x, y: (0, 0, 0))) == (7, 3)
    jpeg = b"\xff\xd8\xff\xe0\x00\x10" + bytes(14) + b"\xff\xc0\x00\x11\x08\x01\x2c\x00\xc8\x03" + bytes(9)
    assert image_size(jpeg) == (200, 300)
    assert image_size(b"GIF89a\x10\x00\x20\x00") == (16, 32)
    assert image_size(b"not an image") is None


def test_an_image_too_large_to_decode_is_refused(mtmd: CountingMtmd) -> None:
    # A valid 100000×100000 PNG header: 30 GB of pixels if decoded, so it never reaches libmtmd.
    huge = png(1, 1, lambda x, y: (0, 0, 0)).replace((1).to_bytes(4, "big") * 2, (100000).to_bytes(4, "big") * 2, 1)
    with pytest.raises(InvalidRequest) as caught:
        mtmd.bitmap(huge, 3)
    assert str(caught.value) == (
        "failed to decode image 3: the image is too large (100000x100000 pixels, at most 67108864 pixels)"
    )


@pytest.mark.parametrize("data", [b"hello, not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, b""])
def test_bytes_that_are_not_an_image_are_refused(mtmd: CountingMtmd, data: bytes) -> None:
    with pytest.raises(InvalidRequest, match=r"^failed to decode image 2: "):
        mtmd.bitmap(data, 2)
