"""``pollama show`` without a field flag: Ollama's sectioned summary of a model."""

from __future__ import annotations

from typing import Any

from pollama.cli._output import go_list, metadata_value, section
from pollama.gguf import human_number


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _head(text: str, n: int) -> list[list[str]]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    rows = [[line] for line in lines[:n]]
    if len(lines) > n:
        rows.append(["..."])
    return rows


def _projector_rows(projector: dict[str, Any]) -> list[list[str]]:
    """Ollama's Projector rows: architecture, parameters, then the vision (else audio) encoder's
    embedding length and projection dimensions, each only when the projector's metadata has it."""
    arch = str(projector.get("general.architecture", ""))
    rows: list[list[str]] = []
    if arch:
        rows.append(["architecture", arch])
    if isinstance(projector.get("general.parameter_count"), int | float):
        rows.append(["parameters", human_number(int(projector["general.parameter_count"]))])
    for key, label in (("embedding_length", "embedding length"), ("projection_dim", "dimensions")):
        for modality in ("vision", "audio"):
            value = projector.get(f"{arch}.{modality}.{key}")
            if isinstance(value, int | float) and not isinstance(value, bool):
                rows.append([label, _number(value)])
                break
    return rows


def render_show(resp: dict[str, Any], *, verbose: bool = False) -> str:
    """The text Ollama's ``show`` prints for an ``/api/show`` response."""
    details = resp.get("details") or {}
    info = resp.get("model_info") or {}
    rows: list[list[str]] = []
    if info:
        arch = str(info.get("general.architecture", ""))
        rows.append(["architecture", arch])
        params = details.get("parameter_size") or (
            human_number(int(info["general.parameter_count"])) if "general.parameter_count" in info else ""
        )
        rows.append(["parameters", params])
        if f"{arch}.context_length" in info:
            rows.append(["context length", _number(info[f"{arch}.context_length"])])
        if f"{arch}.embedding_length" in info:
            rows.append(["embedding length", _number(info[f"{arch}.embedding_length"])])
    else:
        rows.append(["architecture", details.get("family", "")])
        rows.append(["parameters", details.get("parameter_size", "")])
    rows.append(["quantization", details.get("quantization_level", "")])
    if resp.get("requires"):
        rows.append(["requires", resp["requires"]])
    out = section("Model", rows)
    if resp.get("capabilities"):
        out += section("Capabilities", [[c] for c in resp["capabilities"]])
    projector = resp.get("projector_info")
    if projector:
        out += section("Projector", _projector_rows(projector))
    if resp.get("parameters"):
        prows = [line.split() for line in str(resp["parameters"]).splitlines() if line.strip()]
        out += section("Parameters", prows)
    if verbose:
        out += section("Metadata", [[k, metadata_value(v)] for k, v in sorted(info.items())])
        if resp.get("tensors"):
            out += section("Tensors", [[t["name"], t["type"], go_list(list(t["shape"]))] for t in resp["tensors"]])
    if resp.get("system"):
        out += section("System", _head(resp["system"], 2))
    if resp.get("license"):
        out += section("License", _head(resp["license"], 2))
    return out
