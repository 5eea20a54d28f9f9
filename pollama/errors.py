"""Every domain error pollama raises, in one place.

Each error subclasses a built-in exception that says what kind of failure it is (``LookupError`` for
something missing, ``ValueError`` for bad input, ...), and its ``str()`` is the exact message an
Ollama client expects to see. Nothing here knows about HTTP: ``pollama.server.errors`` maps these
classes to status codes in one table, and the CLI prints ``Error: <str(err)>``.
"""

from __future__ import annotations


class PollamaError(Exception):
    """Base class of every error pollama raises on purpose."""


# --- bad input --------------------------------------------------------------------------------


class InvalidRequest(PollamaError, ValueError):
    """The request itself is wrong (HTTP 400)."""


class InvalidModelName(InvalidRequest):
    """A model name that does not follow Ollama's naming rules."""


class InvalidDigest(InvalidRequest):
    """A blob digest not of the form ``sha256:<64 hex>``."""

    def __init__(self, message: str = "invalid digest format") -> None:
        super().__init__(message)


class DigestMismatch(InvalidRequest):
    """Bytes that do not hash to the digest they were sent under."""


class ModelfileError(InvalidRequest):
    """A Modelfile that Ollama's parser would reject; the message is Ollama's."""


class ParameterError(InvalidRequest):
    """A model parameter (PARAMETER line, ``/set parameter``, ``options``) with a bad name or value."""


class UnsupportedCapability(InvalidRequest):
    """The model cannot do what was asked (``"x" does not support chat``, ``... does not support tools``)."""


class NotSupportedYet(InvalidRequest):
    """A feature Ollama has that pollama does not implement yet; the message says which."""


class ConfigError(PollamaError, ValueError):
    """An ``OLLAMA_*`` environment variable with a value that cannot be used; the message names it."""


# --- template engine ----------------------------------------------------------------------------


class TemplateError(PollamaError):
    """A Go template (or Jinja chat template) failed. ``str()`` is Go's message without location."""

    def __init__(self, message: str, *, location: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.location = location

    @property
    def full_message(self) -> str:
        """Go's whole error text: the location prefix (if known) followed by the message."""
        return f"{self.location}{self.message}" if self.location else self.message


class TemplateParseError(TemplateError, ValueError):
    """The template text does not parse (Go's ``template: :LINE: ...`` errors)."""


class TemplateExecError(TemplateError, RuntimeError):
    """Executing a parsed template failed (Go's ``executing "" at <...>: ...`` errors)."""


class TemplatePanic(TemplateError, RuntimeError):
    """A case where Ollama's own Go code panics while building a prompt (an HTTP 500 there)."""


# --- missing things ---------------------------------------------------------------------------


class NotFound(PollamaError, LookupError):
    """Something asked for does not exist (HTTP 404)."""


class ModelNotFound(NotFound):
    """No installed model by that name."""


class BlobNotFound(NotFound):
    """No blob with that digest in the store."""


# --- runtime -----------------------------------------------------------------------------------


class ServerBusy(PollamaError, RuntimeError):
    """The scheduler's queue is full (HTTP 503)."""

    def __init__(self) -> None:
        super().__init__("server busy, please try again.  maximum pending requests exceeded")


class RequestCanceled(PollamaError, RuntimeError):
    """The client went away while its request waited (HTTP 499)."""

    def __init__(self) -> None:
        super().__init__("request canceled")


class RunnerError(PollamaError, RuntimeError):
    """The model runner failed or died (HTTP 500)."""


class StoreError(PollamaError, OSError):
    """The model store is damaged or could not be written (HTTP 500)."""


# --- registry --------------------------------------------------------------------------------


class RegistryError(PollamaError, RuntimeError):
    """Talking to a model registry failed; the message is what Ollama would report."""


class Unauthorized(RegistryError):
    """The registry refused our credentials (HTTP 401 from the registry)."""


class RegistryUnreachable(RegistryError):
    """The registry could not be reached at all (DNS failure, refused or timed-out connection)."""


class RegistryUnavailable(RegistryError):
    """The registry answered 429 or 5xx: a transient failure worth retrying."""


class TemplateLimitExceeded(TemplateExecError, InvalidRequest):
    """A template render was stopped by a budget: steps, wall time, output size or nesting depth (HTTP 400).

    ``str()`` starts with ``template: `` and names the limit (``template: execution exceeded the time
    limit of 2s``), except Go's own recursion limit, whose message and location are Go's
    (``exceeded maximum template depth (100000)``).
    """


# --- store concurrency -------------------------------------------------------------------------


class StoreLocked(StoreError, TimeoutError):
    """The models directory's lock could not be taken in time (another process holds it)."""


# --- model conversion --------------------------------------------------------------------------


class UnsupportedArchitecture(InvalidRequest):
    """``config.json`` names an architecture the converter cannot turn into a GGUF (Ollama's message)."""

    def __init__(self, architecture: str) -> None:
        super().__init__(f'unsupported architecture "{architecture}"')
        self.architecture = architecture


class UnknownTokenizerFormat(InvalidRequest):
    """A model folder with neither ``tokenizer.model`` nor ``tokenizer.json`` (Ollama's message)."""

    def __init__(self) -> None:
        super().__init__("unknown tokenizer format")


class ConversionError(InvalidRequest):
    """A model folder whose files the converter cannot read (missing tensors, bad headers, bad JSON)."""


# --- quantization ------------------------------------------------------------------------------


class UnsupportedQuantization(InvalidRequest):
    """A quantization type that does not exist here, or a model that cannot be quantized to it (HTTP 400)."""


class QuantizationFailed(PollamaError, RuntimeError):
    """llama.cpp's quantizer failed or its subprocess died (HTTP 500)."""


# --- speculative decoding ----------------------------------------------------------------------


class IncompatibleDraftModel(RunnerError):
    """A model's DRAFT layer does not share its vocabulary, so it cannot draft for it (HTTP 500, as any
    model that fails to load: the runner reports it when loading, kind ``internal``)."""
