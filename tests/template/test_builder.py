"""PromptBuilder: which template a request gets, what the prompt implies about the output, context,
fitting, and that rendering happens in a worker thread."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from pathlib import Path

import pytest

from pollama.errors import InvalidRequest, TemplateExecError
from pollama.gguf import read_gguf
from pollama.inference.media import place_images
from pollama.template import PromptRequest
from pollama.template.builder import MEDIA_MARKER, ModelTemplates, PromptBuilder, RenderedPrompt
from pollama.template.jinja import template_tokens

CHATML = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
JINJA = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}{% if tools %} tools:{{ tools | length }}{% endif %}"
    "{% if enable_thinking is defined %} think={{ enable_thinking }}{% endif %}"
)
THINKING = (
    "{{- range .Messages }}{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}"
    "{{ if .ToolCalls }}<tool_call>{{ range .ToolCalls }}{{ json .Function }}{{ end }}</tool_call>"
    "{{ end }}{{ end }}{{ if .Tools }}{{ json .Tools }}{{ end }}"
)
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


def chat(*contents: str, **fields: object) -> PromptRequest:
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": c} for i, c in enumerate(contents)]
    return PromptRequest(messages=messages, **fields)  # type: ignore[arg-type]


def test_go_template_with_model_system_and_messages() -> None:
    model = ModelTemplates(
        template=CHATML,
        system="Be brief.",
        messages=[{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "ok"}],
    )
    prompt = PromptBuilder().build(model, chat("Hi"))
    assert prompt == RenderedPrompt(
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nearlier<|im_end|>\n<|im_start|>assistant\n"
        "ok<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_jinja_template_when_the_model_has_no_go_template() -> None:
    model = ModelTemplates(chat_template=JINJA, system="sys")
    prompt = PromptBuilder().build(model, chat("Hi", tools=TOOLS, think=False))
    assert prompt.text == "[system] sys\n[user] Hi\n[assistant] tools:1 think=False"
    assert prompt.thinking_tags is None and prompt.tool_tag == "{"


def test_go_template_wins_over_jinja_unless_told_otherwise() -> None:
    model = ModelTemplates(template=CHATML, chat_template=JINJA)
    assert PromptBuilder().build(model, chat("Hi")).text.startswith("<|im_start|>user")
    assert PromptBuilder(prefer_go=False).build(model, chat("Hi")).text.startswith("[user] Hi")


def test_plain_prompt_without_any_template() -> None:
    req = PromptRequest(endpoint="generate", prompt="Once upon a time", system="ignored by {{ .Prompt }}")
    assert PromptBuilder().build(ModelTemplates(), req).text == "Once upon a time"


def test_raw_and_request_template() -> None:
    model = ModelTemplates(template=CHATML, system="Be brief.")
    raw = PromptRequest(endpoint="generate", prompt="<b>as is</b>")
    assert PromptBuilder().build(model, raw, raw=True).text == "<b>as is</b>"
    req = PromptRequest(endpoint="generate", prompt="Q")
    assert PromptBuilder().build(model, req, template="{{ .System }}: {{ .Prompt }}").text == "Be brief.: Q"


def test_thinking_and_tool_tags_come_from_the_template() -> None:
    model = ModelTemplates(template=THINKING)
    plain = PromptBuilder().build(model, chat("Hi"))
    assert plain.thinking_tags == ("<think>", "</think>") and plain.tool_tag is None  # no tools in the request
    assert PromptBuilder().build(model, chat("Hi", tools=TOOLS)).tool_tag == "<tool_call>"


def test_context_goes_in_front_and_model_messages_stay_out() -> None:
    model = ModelTemplates(template=CHATML, messages=[{"role": "user", "content": "earlier"}])
    req = PromptRequest(endpoint="generate", prompt="next")

    async def detokenize(tokens: list[int]) -> str:
        return "".join(chr(t) for t in tokens)

    prompt = asyncio.run(PromptBuilder().render(model, req, context=[ord(c) for c in "SO FAR|"], detokenize=detokenize))
    assert prompt.text == "SO FAR|<|im_start|>user\nnext<|im_end|>\n<|im_start|>assistant\n"


def test_fitting_counts_only_what_may_not_fit() -> None:
    model = ModelTemplates(template=CHATML)
    req = chat("a " * 50, "b", "c")
    counted: list[list[str]] = []

    async def count(texts: list[str]) -> list[int]:
        counted.append(texts)
        return [len(text) for text in texts]

    async def build(num_ctx: int) -> str:
        return (await PromptBuilder().render(model, req, num_ctx=num_ctx, count_tokens=count)).text

    assert "a a a" in asyncio.run(build(1000)) and counted == []  # fits by its byte length: nothing counted
    short = asyncio.run(build(100))
    assert "a a a" not in short and short.startswith("<|im_start|>assistant\nb<|im_end|>")
    assert [len(texts) for texts in counted] == [1]  # the full prompt; the next candidate fits by its bytes


def test_render_leaves_the_event_loop_free() -> None:
    model = ModelTemplates(template="{{ range 300000 }}{{ end }}{{ .Prompt }}")
    req = PromptRequest(endpoint="generate", prompt="x")

    async def main() -> tuple[float, float, str]:
        gaps: list[float] = []
        loop = asyncio.get_running_loop()
        render = asyncio.ensure_future(PromptBuilder().render(model, req))
        started = last = loop.time()
        while not render.done():
            await asyncio.sleep(0.005)
            gaps.append(loop.time() - last)
            last = loop.time()
        return max(gaps), loop.time() - started, (await render).text

    gap, elapsed, text = asyncio.run(main())
    assert text == "x" and elapsed > 0.1 and gap < elapsed / 2, (gap, elapsed)


def test_template_errors_propagate_from_the_worker() -> None:
    model = ModelTemplates(template="{{ .Messages.Nope }}")
    with pytest.raises(TemplateExecError):
        asyncio.run(PromptBuilder().render(model, chat("Hi")))


# --- images -------------------------------------------------------------------------------------

PNG_A = base64.b64encode(b"\x89PNG\r\n\x1a\nA").decode()
PNG_B = base64.b64encode(b"\x89PNG\r\n\x1a\nB").decode()
RAW_A, RAW_B = base64.b64decode(PNG_A), base64.b64decode(PNG_B)
MARK = MEDIA_MARKER


def test_go_template_tags_images_and_the_runner_gets_them_in_tag_order() -> None:
    req = PromptRequest(
        messages=[
            {"role": "user", "content": "first", "images": [PNG_A]},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "compare [img] with this", "images": [PNG_B, PNG_A]},
        ]
    )
    prompt = PromptBuilder().build(ModelTemplates(template=CHATML), req)
    assert prompt.text == (
        "<|im_start|>user\n[img-0]first<|im_end|>\n<|im_start|>assistant\nok<|im_end|>\n"
        "<|im_start|>user\n[img-2]compare [img-1] with this<|im_end|>\n<|im_start|>assistant\n"
    )
    assert prompt.images == [RAW_A, RAW_B, RAW_A] and prompt.image_tags
    text, images = place_images(prompt, vision=True)
    assert text == (
        f"<|im_start|>user\n{MARK}first<|im_end|>\n<|im_start|>assistant\nok<|im_end|>\n"
        f"<|im_start|>user\n{MARK}compare {MARK} with this<|im_end|>\n<|im_start|>assistant\n"
    )
    # Markers in text order: [img-0], [img-2], [img-1].
    assert images == [RAW_A, RAW_A, RAW_B]


def test_raw_generate_images_are_referenced_by_their_tags() -> None:
    req = PromptRequest(endpoint="generate", prompt="B: [img-1] A: [img-0] B again: [img-1]", images=[PNG_A, PNG_B])
    prompt = PromptBuilder().build(ModelTemplates(template=CHATML), req, raw=True)
    text, images = place_images(prompt, vision=True)
    assert text == f"B: {MARK} A: {MARK} B again: {MARK}"
    assert images == [RAW_B, RAW_A, RAW_B]
    # An image no tag names is not sent; a model without vision gets the text untouched.
    assert place_images(PromptBuilder().build(ModelTemplates(), req, raw=True), vision=False)[1] == []
    unreferenced = PromptRequest(endpoint="generate", prompt="no tags", images=[PNG_A])
    assert place_images(PromptBuilder().build(ModelTemplates(), unreferenced, raw=True), vision=True) == ("no tags", [])


def test_a_tag_naming_no_image_is_ollamas_invalid_image_index() -> None:
    req = PromptRequest(endpoint="generate", prompt="[img-0] [img-2]", images=[PNG_A])
    prompt = PromptBuilder().build(ModelTemplates(), req, raw=True)
    with pytest.raises(InvalidRequest) as info:
        place_images(prompt, vision=True)
    assert str(info.value) == "invalid image index: 2"
    huge = PromptBuilder().build(
        ModelTemplates(), PromptRequest(endpoint="generate", prompt="[img-" + "9" * 5000 + "]"), raw=True
    )
    with pytest.raises(InvalidRequest, match=r"^invalid image index: 9{5000}$"):
        place_images(huge, vision=True)


def test_generate_images_go_to_the_user_message_of_the_go_template() -> None:
    req = PromptRequest(endpoint="generate", prompt="What is it?", images=[PNG_A])
    prompt = PromptBuilder().build(ModelTemplates(template=CHATML), req)
    assert prompt.text == "<|im_start|>user\n[img-0]What is it?<|im_end|>\n<|im_start|>assistant\n"
    assert place_images(prompt, vision=True) == (
        f"<|im_start|>user\n{MARK}What is it?<|im_end|>\n<|im_start|>assistant\n",
        [RAW_A],
    )


@pytest.fixture(scope="module")
def gemma_vision(vision_testdata: Path) -> ModelTemplates:
    """The tiny vision model's own Jinja chat template and special tokens, read from its GGUF."""
    gguf = read_gguf(vision_testdata / "tiny-gemma3-vision-f16.gguf", arrays="all")
    bos, eos = template_tokens(gguf.metadata)
    return ModelTemplates(chat_template=str(gguf.metadata["tokenizer.chat_template"]), bos_token=bos, eos_token=eos)


def test_jinja_template_renders_the_media_marker_where_the_image_goes(gemma_vision: ModelTemplates) -> None:
    req = PromptRequest(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is in this image?", "images": [PNG_A]},
            {"role": "assistant", "content": "Shapes."},
            {"role": "user", "content": "And here, [img] left of [img]?", "images": [PNG_B, PNG_A]},
        ]
    )
    prompt = PromptBuilder().build(gemma_vision, req)
    assert prompt.text == (
        f"<bos><start_of_turn>user\nBe brief.\n\n{MARK}What is in this image?<end_of_turn>\n"
        "<start_of_turn>model\nShapes.<end_of_turn>\n"
        f"<start_of_turn>user\nAnd here, {MARK} left of {MARK}?<end_of_turn>\n<start_of_turn>model\n"
    )
    assert not prompt.image_tags
    assert place_images(prompt, vision=True) == (prompt.text, [RAW_A, RAW_B, RAW_A])


def test_jinja_bos_is_left_to_a_tokenizer_that_adds_it(gemma_vision: ModelTemplates) -> None:
    req = PromptRequest(endpoint="generate", prompt="Describe.")
    written = PromptBuilder().build(gemma_vision, req).text
    adding = PromptBuilder().build(dataclasses.replace(gemma_vision, add_bos=True), req).text
    assert written == "<bos>" + adding
    assert adding == "<start_of_turn>user\nDescribe.<end_of_turn>\n<start_of_turn>model\n"


def test_jinja_generate_and_split_content_parts(gemma_vision: ModelTemplates) -> None:
    gen = PromptBuilder().build(gemma_vision, PromptRequest(endpoint="generate", prompt="Describe.", images=[PNG_B]))
    assert gen.text == f"<bos><start_of_turn>user\n{MARK}Describe.<end_of_turn>\n<start_of_turn>model\n"
    assert gen.images == [RAW_B]
    # OpenAI's content parts arrive as one message per part: they render as one turn, parts in order.
    split = PromptRequest(
        messages=[
            {"role": "user", "content": "What is in this image?"},
            {"role": "user", "content": "", "images": [PNG_A]},
            {"role": "user", "content": "Be precise."},
        ]
    )
    prompt = PromptBuilder().build(gemma_vision, split)
    assert prompt.text == (
        f"<bos><start_of_turn>user\nWhat is in this image?{MARK}Be precise.<end_of_turn>\n<start_of_turn>model\n"
    )
    assert prompt.images == [RAW_A]
    # Consecutive text-only messages stay separate turns, as before.
    two = PromptBuilder().build(gemma_vision, chat("a", "b", "c"))
    assert two.text.count("<start_of_turn>") == 4


def test_jinja_template_that_only_renders_strings_gets_the_marker_in_the_string() -> None:
    plain = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    req = PromptRequest(messages=[{"role": "user", "content": "What?", "images": [PNG_A, PNG_B]}])
    prompt = PromptBuilder().build(ModelTemplates(chat_template=plain), req)
    assert prompt.text == f"<user>{MARK}{MARK}What?"
    assert prompt.images == [RAW_A, RAW_B]
