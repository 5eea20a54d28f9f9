"""The runner-factory seam: ``build_scheduler(settings, launcher)`` is the scheduler a server uses.

Without a Ray address it is the plain ``Scheduler`` over ``launcher`` (runner subprocesses on this
machine), built exactly as before; with one (``POLLAMA_RAY_ADDRESS`` / ``serve --ray``) runners are
Ray actors placed on the cluster (``pollama.cluster``), each model a ``ReplicaSet``, and free memory
is the cluster's. Ray is imported only in that case.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pollama.scheduler.scheduler import Runner, Scheduler
from pollama.scheduler.spec import LoadSpec

if TYPE_CHECKING:
    from pollama.config import Settings


def build_scheduler(settings: Settings, launcher: Callable[[LoadSpec], Awaitable[Any]]) -> Scheduler:
    """The scheduler for a server with ``settings``; ``launcher`` starts a local runner."""
    if not settings.ray_address:
        return Scheduler(
            launcher,
            default_keep_alive=settings.keep_alive,
            max_loaded=settings.effective_max_loaded_models,
            max_queue=settings.max_queue,
        )
    from pollama.cluster.placement import RayPlacement
    from pollama.scheduler.replicas import ReplicaSet

    placement = RayPlacement(settings)

    async def launch_on_cluster(spec: LoadSpec) -> Runner:
        return await ReplicaSet.start(
            spec, placement.launch, max_replicas=settings.max_replicas, idle_timeout=settings.keep_alive
        )

    return Scheduler(
        launch_on_cluster,
        default_keep_alive=settings.keep_alive,
        max_loaded=settings.effective_max_loaded_models,
        max_queue=settings.max_queue,
        memory_probe=placement.memory,
    )
