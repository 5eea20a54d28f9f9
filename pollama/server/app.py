"""The app factory: ``create_app(settings)`` builds a FastAPI app with all routes and guards."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from pollama import __version__
from pollama.config import Settings
from pollama.server import anthropic, oci, openai
from pollama.server import metrics as metrics_api
from pollama.server.accesslog import RequestObserver
from pollama.server.auth import ApiKeyGuard, KeyRing
from pollama.server.context import ServerContext, document_errors
from pollama.server.errors import install_error_handlers
from pollama.server.middleware import HostGuard, add_cors
from pollama.server.ollama import inference, misc, models
from pollama.server.ollama import registry as registry_api
from pollama.server.openapi_docs import install_openapi_docs
from pollama.server.shutdown import Shutdown
from pollama.server.ui import router as ui_router
from pollama.store import ModelStore

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    """A pollama server for ``settings``; its state lives on ``app.state.ctx``, its metrics on
    ``app.state.metrics`` and its shutdown state on ``app.state.shutdown`` (``begin()`` on SIGTERM)."""
    ctx = ServerContext(settings=settings, store=ModelStore(settings.models, noprune=settings.noprune))
    metrics = metrics_api.Metrics()
    shutdown = Shutdown(settings.shutdown_grace)
    inference_service = metrics_api.ObservedInference(settings, ctx.store)
    inference_service.metrics = metrics
    metrics.watch(inference_service.scheduler)
    ctx.services["inference"] = inference_service
    api_keys = KeyRing.from_settings(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        shutdown.bind(asyncio.get_running_loop())
        await run_in_threadpool(ctx.store.prepare)
        inference_service.start()
        if api_keys is not None:
            api_keys.start()
        try:
            yield
        finally:
            if api_keys is not None:
                api_keys.close()
            await inference_service.close()
            await run_in_threadpool(ctx.store.quantizers.close)

    app = FastAPI(
        title="pollama", version=__version__, lifespan=lifespan, description="Ollama's API, served by pollama."
    )
    app.state.ctx = ctx
    app.state.api_keys = api_keys
    app.state.metrics = metrics
    app.state.shutdown = shutdown
    install_error_handlers(app)
    document_errors(app)
    install_openapi_docs(app)
    app.include_router(misc.router)
    app.include_router(metrics_api.router)
    app.include_router(models.router)
    app.include_router(registry_api.router)
    app.include_router(inference.router)
    app.include_router(openai.router)
    app.include_router(anthropic.router)
    app.include_router(ui_router)
    app.include_router(oci.router)
    app.add_middleware(ApiKeyGuard, keys=api_keys)  # inside CORS: preflights answer, 401s carry CORS headers
    add_cors(app, settings.origins)
    app.add_middleware(HostGuard, enabled=settings.host.is_loopback)
    app.add_middleware(RequestObserver, metrics=metrics, shutdown=shutdown, log_bodies=settings.debug >= 2)
    return app
