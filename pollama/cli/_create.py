"""``pollama create``: read the Modelfile, upload the files it names, then stream ``/api/create``."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pollama.cli._progress import TransferProgress
from pollama.client import Client
from pollama.errors import InvalidModelName, ModelfileError
from pollama.modelfile import parse_modelfile, typed_parameters
from pollama.modelfile.request import prepare_create
from pollama.names import parse_name
from pollama.store.blobs import digest_file


def create_from_modelfile(
    client: Client, model: str, file: str, *, quantize: str = "", draft_quantize: str = ""
) -> None:
    """Create ``model`` from the Modelfile ``file`` (default ``./Modelfile``; none → ``FROM .``)."""
    try:
        parse_name(model)
    except InvalidModelName:
        raise InvalidModelName(f"invalid model name: {model}") from None
    path = Path(file or "Modelfile").expanduser().absolute()
    if path.is_file():
        text: bytes | str = path.read_bytes()
    elif file:
        raise ModelfileError("specified Modelfile wasn't located")
    else:
        text = "FROM .\n"
    commands = parse_modelfile(text)
    prepared = prepare_create(commands, path.parent, typed_parameters=typed_parameters)
    for warning in prepared.warnings:
        print(warning, file=sys.stderr)
    if draft_quantize and not prepared.draft_files:
        raise ModelfileError("--draft-quantize requires a DRAFT model")
    with TransferProgress() as printer:
        body = dict(prepared.body)
        if prepared.files:
            body["files"] = _upload(client, prepared.files, printer)
        if prepared.adapters:
            body["adapters"] = _upload(client, prepared.adapters, printer)
        if prepared.draft_files:
            body["draft_files"] = _upload(client, prepared.draft_files, printer)
        if quantize:
            body["quantize"] = quantize
        if draft_quantize:
            body["draft_quantize"] = draft_quantize
        body["model"] = model
        for item in client.create(body):
            printer.update(item)


def _upload(client: Client, files: dict[str, Path], printer: TransferProgress) -> dict[str, str]:
    """Hash every file (in parallel) and upload those the server lacks; returns name → digest."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        digests = dict(zip(files, pool.map(digest_file, files.values()), strict=True))
    for name, digest in digests.items():
        if client.has_blob(digest):
            continue
        # Ollama's wording: one spinner line whose message counts up, not a bar.
        client.upload_blob(
            digest,
            files[name],
            progress=lambda sent, total, digest=digest: printer.message(
                digest, f"copying file {digest} {100 * sent // max(total, 1)}%"
            ),
        )
    return {Path(name).name if "/" not in name else name: digest for name, digest in digests.items()}
