"""Placing runners on a Ray cluster: ``RayPlacement`` connects the frontend to the cluster, starts a
``RunnerActor`` for a ``LoadSpec`` with the resources the model needs, and tells the scheduler how
much memory the cluster has free.

Resources: ``memory`` is the model's estimate (``LoadSpec.estimated_memory``), ``num_cpus`` its
thread count (1 when unset), one GPU when the cluster has GPUs and the model may offload layers.
The first replica of a model goes where Ray's default policy puts it; further replicas are spread
over the nodes (``SPREAD``), so a node that dies does not take every replica. Actors are named and
detached (``pollama/<frontend>/<model digest>/<random>`` in the ``pollama`` namespace): a frontend that
restarts finds its runners again by name and adopts the ones that still run its spec.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import socket
import threading
import time
from typing import Any, cast

import ray

from pollama.cluster.actor import RunnerActor
from pollama.cluster.remote import ActorRunner, actor_error
from pollama.cluster.sync import BlobSource, spec_blobs
from pollama.config import Settings, read_api_keys_file
from pollama.errors import RunnerError
from pollama.scheduler.memory import MemoryInfo
from pollama.scheduler.spec import LoadSpec

log = logging.getLogger(__name__)

NAMESPACE = "pollama"
"""The Ray namespace of every pollama actor."""

_REFRESH_SECONDS = 1.0


class RayPlacement:
    """Runners as Ray actors for one frontend (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._connected = False
        self._connect_lock = threading.Lock()
        self._memory = MemoryInfo(0, 0)
        self._has_gpus = False
        self._refresher: threading.Thread | None = None
        self._stop = threading.Event()
        self._owned: set[str] = set()  # names of the actors this frontend's runners hold

    # --- the cluster ------------------------------------------------------------------------------

    def connect(self) -> None:
        """Join the cluster (blocking; run in a worker thread). ``auto`` joins the local one."""
        with self._connect_lock:
            if self._connected:
                return
            address = self.settings.ray_address
            host = address.rpartition(":")[0]
            # a cluster on loopback (one machine): the driver must say it is on that address too
            extra: dict[str, Any] = {"_node_ip_address": host} if host.startswith("127.") else {}
            ray.init(
                **extra,
                address=address,
                namespace=NAMESPACE,
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
            self._connected = True
            self._refresh()
            self._refresher = threading.Thread(target=self._keep_refreshing, name="ray-resources", daemon=True)
            self._refresher.start()
            log.info("joined Ray cluster at %s: %d nodes", address, len([n for n in _nodes() if n.get("Alive")]))

    def _keep_refreshing(self) -> None:
        while not self._stop.wait(_REFRESH_SECONDS):
            try:
                self._refresh()
            except Exception as exc:  # noqa: BLE001 - keep the last figures
                log.debug("reading the cluster's resources: %s", exc)

    def _refresh(self) -> None:
        """Cluster memory: the total of every node, and the most one node has free (where a model can go)."""
        total = 0
        best = 0
        gpus = 0.0
        for node in _nodes():
            if not node.get("Alive"):
                continue
            resources = node.get("Resources", {})
            total += int(resources.get("memory", 0))
            gpus += float(resources.get("GPU", 0))
        per_node = _available_per_node()
        for available in per_node.values():
            best = max(best, int(available.get("memory", 0)))
        self._memory = MemoryInfo(total, best)
        self._has_gpus = gpus > 0

    def memory(self) -> MemoryInfo:
        """The scheduler's memory probe: cluster total, and the largest free memory of one node."""
        if not self._connected:
            return MemoryInfo(1 << 62, 1 << 62)  # not joined yet: the first load joins and is placed by Ray
        return self._memory

    def close(self) -> None:
        """Stop reading the cluster's resources."""
        self._stop.set()

    # --- runners ----------------------------------------------------------------------------------

    def actor_prefix(self, spec: LoadSpec) -> str:
        """The start of the names of this frontend's actors for ``spec`` (``pollama/<frontend>/<model>/``)."""
        frontend = f"{socket.gethostname()}:{self.settings.host.port}"
        model = hashlib.sha256(repr(_identity(spec)).encode()).hexdigest()[:16]
        return f"pollama/{frontend}/{model}/"

    def source(self) -> BlobSource:
        """Where nodes pull blobs from: this frontend's ``/v2`` (an address nodes can reach)."""
        host = self.settings.host.host
        if host in ("", "0.0.0.0", "::"):
            host = str(cast(Any, ray.util).get_node_ip_address())
        key = self.settings.api_keys[0] if self.settings.api_keys else ""
        if not key and self.settings.api_keys_file is not None:
            keys = read_api_keys_file(self.settings.api_keys_file)
            key = keys[0] if keys else ""
        return BlobSource(f"{host}:{self.settings.host.port}", key)

    async def launch(self, spec: LoadSpec, index: int) -> ActorRunner:
        """A runner for ``spec`` on the cluster: an adopted actor of ours, or a new one."""
        await asyncio.to_thread(self.connect)
        prefix = self.actor_prefix(spec)
        for orphan in await asyncio.to_thread(self._orphans, prefix):
            adopted = await self._adopt(orphan, spec)
            if adopted is not None:
                return adopted
        name = f"{prefix}{secrets.token_hex(4)}"
        self._owned.add(name)
        blobs = await asyncio.to_thread(spec_blobs, spec)
        source = await asyncio.to_thread(self.source)
        options: dict[str, Any] = {
            "name": name,
            "namespace": NAMESPACE,
            "lifetime": "detached",
            "num_cpus": spec.num_thread if spec.num_thread > 0 else 1,
            "num_gpus": 1 if self._has_gpus and spec.num_gpu != 0 else 0,
            "max_restarts": 0,
            "max_concurrency": 1000,
        }
        if spec.estimated_memory > 0:
            options["memory"] = spec.estimated_memory
        if index > 0:
            options["scheduling_strategy"] = "SPREAD"
        remote: Any = ray.remote(RunnerActor)
        handle: Any = remote.options(**options).remote(
            spec, blobs, source, self.settings.load_timeout, bool(self.settings.debug)
        )
        started = time.monotonic()
        try:
            described = await _bounded(handle.load.remote(), self.settings.load_timeout)
        except BaseException as exc:
            self._owned.discard(name)
            ray.kill(handle, no_restart=True)
            if isinstance(exc, TimeoutError):
                raise RunnerError(
                    f"no node of the Ray cluster could load {spec.name} within "
                    f"{self.settings.load_timeout:g}s (memory {spec.estimated_memory} bytes)"
                ) from None
            if isinstance(exc, ray.exceptions.RayError):
                raise actor_error(exc) from None
            raise
        await asyncio.to_thread(self._refresh)
        log.info("runner %s on node %s in %.1fs", name, described.get("node"), time.monotonic() - started)
        return ActorRunner(handle, spec, described, name, on_stop=self._owned.discard)

    def _orphans(self, prefix: str) -> list[str]:
        """Names of live actors of ours for a model that no runner of this process holds (a frontend
        that restarted left them)."""
        names = cast(Any, ray.util).list_named_actors(all_namespaces=False)
        return sorted(n for n in names if isinstance(n, str) and n.startswith(prefix) and n not in self._owned)

    async def _adopt(self, name: str, spec: LoadSpec) -> ActorRunner | None:
        """Our actor of that name if it still runs ``spec`` (a frontend restarted); else kill it."""
        try:
            handle = await asyncio.to_thread(ray.get_actor, name, NAMESPACE)
        except ValueError:
            return None
        try:
            described = await _bounded(handle.describe.remote(), 10.0)
        except Exception:  # noqa: BLE001 - unreachable: replace it
            described = {}
        running: LoadSpec | None = described.get("spec")
        if described.get("alive") and running is not None and _identity(running) == _identity(spec):
            log.info("adopted runner %s on node %s", name, described.get("node"))
            self._owned.add(name)
            return ActorRunner(handle, spec, described, name, on_stop=self._owned.discard)
        ray.kill(handle, no_restart=True)
        return None


def _identity(spec: LoadSpec) -> tuple[Any, ...]:
    """What makes two specs the same runner: the model's blobs and every load-time option."""
    return (
        spec.model_path.name,
        tuple(p.name for p in spec.adapters),
        tuple(p.name for p in spec.projectors),
        spec.draft.name if spec.draft is not None else "",
        spec.draft_num_predict,
        spec.num_ctx,
        spec.num_batch,
        spec.num_gpu,
        spec.main_gpu,
        spec.use_mmap,
        spec.use_mlock,
        spec.num_thread,
        spec.num_parallel,
        spec.embedding,
        spec.flash_attention,
        spec.kv_cache_type,
    )


async def _bounded(ref: Any, seconds: float) -> Any:
    """Await an object ref, at most ``seconds`` (no bound when not positive or infinite)."""
    if seconds <= 0 or seconds == float("inf"):
        return await ref
    return await asyncio.wait_for(ref, seconds)


def _available_per_node() -> dict[str, dict[str, float]]:
    """Free resources of each live node (Ray's state API)."""
    from ray._private.state import available_resources_per_node

    return dict(cast(Any, available_resources_per_node)())


def _nodes() -> list[dict[str, Any]]:
    """Every node Ray knows, alive or dead."""
    return list(cast(Any, ray).nodes())
