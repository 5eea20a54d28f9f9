"""A fake runner at the ``ModelRunner`` seam and tiny GGUF model files, for the inference tests.

``FakeRunner`` is a complete in-process implementation of ``pollama.runner.client.ModelRunner``: a
character tokenizer (one token per character, token id = code point, plus a BOS token of id 1),
and generations that replay a scripted reply piece by piece. It records every call, so tests can
assert what the service sent and how often. No runner process is started.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from pollama.runner.client import CompletionEvent, CompletionParams, Embeddings, Finished, Piece, PromptTokens
from pollama.scheduler import LoadSpec

BOS = 1
CHATML = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"


@dataclass
class FakeRunner:
    """An in-process ``ModelRunner``; ``replies`` are the generations it will produce, in order."""

    spec: LoadSpec
    replies: list[list[str]] = field(default_factory=list)
    failure: BaseException | None = None  # raised by the next generation instead of replying
    completions: list[CompletionParams] = field(default_factory=list)
    count_calls: list[list[str]] = field(default_factory=list)
    tokenize_calls: list[str] = field(default_factory=list)
    stopped: bool = False
    _exited: asyncio.Event = field(default_factory=asyncio.Event, repr=False, compare=False)

    # --- the scheduler's part -----------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return not self.stopped

    @property
    def memory(self) -> int:
        return 1000

    async def wait_exit(self) -> None:
        await self._exited.wait()

    async def stop(self) -> None:
        self.stopped = True
        self._exited.set()

    # --- the service's part -------------------------------------------------------------------

    @staticmethod
    def tokens_of(text: str, *, add_special: bool = True) -> list[int]:
        return ([BOS] if add_special else []) + [ord(c) for c in text]

    async def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        self.tokenize_calls.append(text)
        return self.tokens_of(text, add_special=add_special)

    async def detokenize(self, tokens: list[int]) -> str:
        return "".join(chr(t) for t in tokens if t != BOS)

    async def count(self, texts: list[str]) -> list[int]:
        self.count_calls.append(list(texts))
        return [len(self.tokens_of(text)) for text in texts]

    async def complete(self, params: CompletionParams) -> AsyncGenerator[CompletionEvent, None]:
        self.completions.append(params)
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure
        prompt = self.tokens_of(params.prompt)
        yield PromptTokens(len(prompt), prompt if params.return_tokens else [])
        pieces = self.replies.pop(0) if self.replies else ["ok"]
        for piece in pieces:
            yield Piece(piece)
        generated = [ord(c) for c in "".join(pieces)]
        yield Finished(
            done_reason="stop",
            prompt_eval_count=len(prompt),
            prompt_eval_duration=1000,
            eval_count=len(pieces),
            eval_duration=2000,
            tokens=generated,
        )

    async def embed(self, inputs: list[list[int]]) -> Embeddings:
        return Embeddings(
            [[float(len(tokens)), 0.0, 0.0, 1.0] for tokens in inputs], sum(len(tokens) for tokens in inputs)
        )


class Runners:
    """The launcher the service gets: starts ``FakeRunner``s and remembers them."""

    def __init__(self) -> None:
        self.started: list[FakeRunner] = []
        self.replies: list[list[str]] = []

    async def launch(self, spec: LoadSpec) -> FakeRunner:
        runner = FakeRunner(spec, replies=self.replies)
        self.started.append(runner)
        return runner

    @property
    def last(self) -> FakeRunner:
        return self.started[-1]


def write_model_gguf(
    path: Path, *, context_length: int = 4096, chat_template: str | None = None, embedding: bool = False
) -> Path:
    """A tiny but valid GGUF header ("llama", a 4-token vocabulary) with one small tensor."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(context_length)
    writer.add_embedding_length(8)
    writer.add_head_count(1)
    writer.add_file_type(0)
    writer.add_token_list(["<unk>", "<s>", "</s>", "a"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    if embedding:
        writer.add_uint32("llama.pooling_type", 1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_projector_gguf(path: Path) -> Path:
    """A tiny but valid vision projector GGUF header (architecture ``clip``, as llama.cpp writes mmproj files)."""
    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_string("clip.projector_type", "gemma3")
    writer.add_uint32("clip.vision.block_count", 1)
    writer.add_tensor("v.patch_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
