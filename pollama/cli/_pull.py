"""``pollama pull`` and ``pollama push``: stream the server's status lines into progress bars.

``pull_model`` is also what ``pollama run`` calls when the model is not installed yet.
"""

from __future__ import annotations

from pollama.cli._progress import TransferProgress
from pollama.client import Client, ClientError
from pollama.names import parse_name


def pull_model(client: Client, name: str, *, insecure: bool = False) -> None:
    """Pull ``name`` through the server, drawing one bar per layer."""
    with TransferProgress() as progress:
        for item in client.pull(name, insecure=insecure):
            progress.update(item)


def push_model(client: Client, name: str, *, insecure: bool = False) -> None:
    """Push ``name`` through the server; Ollama's wording for refused pushes and for where it went."""
    from pollama.registry.auth import is_ollama_host

    model = parse_name(name)
    try:
        with TransferProgress() as progress:
            for item in client.push(name, insecure=insecure):
                progress.update(item)
    except ClientError as exc:
        text = str(exc)
        if "access denied" in text or "unauthorized" in text:
            if is_ollama_host(model.host):
                raise ClientError(
                    "you are not authorized to push to this namespace, create the model under a namespace you own",
                    exc.status,
                ) from None
            raise ClientError(
                f"{text} (the server found no credentials for {model.host}: add them to ~/.docker/config.json)",
                exc.status,
            ) from None
        raise
    if is_ollama_host(model.host):
        print("\nYou can find your model at:\n")
        print(f"\thttps://ollama.com/{model.display.removesuffix(':latest')}")
