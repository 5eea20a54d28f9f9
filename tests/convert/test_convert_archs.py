"""Tiny random-weight Hugging Face folders of each decoder family, converted and run by llama.cpp
(llama-cpp-python, every position's logits) against a numpy forward pass of the same folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pollama.convert import convert_model
from tests.convert.convert_fixtures import CASES, TOKENS, VOCAB, tiny_hf_folder
from tests.convert.convert_reference import forward, load_folder


@pytest.mark.parametrize("arch", list(CASES))
def test_llama_cpp_logits_match_reference(tmp_path: Path, arch: str) -> None:
    from llama_cpp import Llama

    folder, config = tiny_hf_folder(tmp_path, arch)
    target = tmp_path / "model.gguf"
    convert_model(folder, target)
    reference = forward(config, load_folder(folder), TOKENS)

    llm = Llama(model_path=str(target), n_ctx=32, n_batch=32, logits_all=True, verbose=False, n_threads=1)
    try:
        assert llm.n_vocab() == VOCAB
        llm.eval(TOKENS)
        got = np.array(llm.scores[: len(TOKENS)], dtype=np.float32)
    finally:
        llm.close()
    scale = float(np.abs(reference).max())
    assert scale > 1.0  # the logits are not all near zero: the comparison means something
    assert float(np.abs(got - reference).max()) < 0.01 * scale
    assert got.argmax(axis=-1).tolist() == reference.argmax(axis=-1).tolist()
