"""The one owner of repository operations: the start-up load, polling, explicit load and unload, and the
health and draining that follow any change. The poller and the repository RPCs call the same methods;
every background task the controller starts is kept and awaited in ``stop()``."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from bnserve.server.dataplane import DataPlane
from bnserve.server.errors import ModelControlDisabled, ModelLoadFailed
from bnserve.server.health import ReadinessHealth
from bnserve.server.models import READY, ModelRegistry, VersionState
from bnserve.server.repository_scan import RepositoryScan, scan_repository
from bnserve.server.settings import ServerSettings

log = logging.getLogger("bnserve.server")


def signatures_of(scan: RepositoryScan) -> dict[str, tuple]:
    """{model: ((version, files signature, problem) ...)}: changes when a version appears, disappears, is
    still being written (a half-copied directory is retried once it changed) or is rewritten in place."""
    return {
        name: tuple(
            (version, found.signature, found.problem) for version, found in sorted(versions.items())
        )
        for name, versions in scan.models.items()
    }


class RepositoryController:
    def __init__(
        self,
        settings: ServerSettings,
        registry: ModelRegistry,
        dataplane: DataPlane,
        health: ReadinessHealth,
    ):
        self.settings = settings
        self.registry = registry
        self.dataplane = dataplane
        self.health = health
        # Repository loads get a thread of their own so that a slow load never holds up inference (each
        # version's batcher has its own model threads).
        self.loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bnserve-load")
        self.signatures: dict[str, tuple] = {}
        self.poller: asyncio.Task | None = None
        self.tasks: set[asyncio.Task] = set()

    def load_at_start(self) -> None:
        scan = scan_repository(self.settings.repository, self.settings.model_name)
        self.signatures = signatures_of(scan)
        self.registry.load_all(scan)

    def start(self) -> None:
        if self.settings.polling:
            self.poller = asyncio.get_running_loop().create_task(self.poll_forever())

    def check_model_control(self) -> None:
        if self.settings.model_control != "explicit":
            raise ModelControlDisabled(self.settings.model_control)

    async def load(self, name: str) -> list[VersionState]:
        """RepositoryModelLoad: (re)load one model now (model control explicit only); ModelLoadFailed, with every
        version's reason, when no version could be loaded."""
        self.check_model_control()
        states = await asyncio.get_running_loop().run_in_executor(
            self.loader, self.registry.load, name
        )
        self.after_change()
        if not any(s.state == READY for s in states):
            raise ModelLoadFailed(
                f"model {name!r}: no version could be loaded: "
                + "; ".join(f"version {s.version}: {s.reason}" for s in states)
            )
        return states

    async def unload(self, name: str) -> None:
        """RepositoryModelUnload (model control explicit only); in-flight requests finish first."""
        self.check_model_control()
        self.registry.unload(name)
        self.after_change()

    def after_change(self) -> None:
        """Health and the draining of versions no longer served, in the background: an RPC answers at once."""
        task = asyncio.get_running_loop().create_task(self.models_changed())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def models_changed(self) -> None:
        await self.health.refresh()
        await self.dataplane.release_unserved(self.settings.grace_seconds)

    async def poll_once(self) -> None:
        loop = asyncio.get_running_loop()
        scan = await loop.run_in_executor(
            self.loader, scan_repository, self.settings.repository, self.settings.model_name
        )
        self.registry.set_problems(scan.problems)
        current = signatures_of(scan)
        changed = [
            name for name, signature in current.items() if self.signatures.get(name) != signature
        ]
        removed = [name for name in self.signatures if name not in current]
        self.signatures = current
        for name in changed:
            try:
                await loop.run_in_executor(self.loader, self.registry.load, name, scan.models[name])
            except Exception:  # one model's failure never keeps the others from loading
                log.exception("loading model %r failed; retrying when its files change", name)
        for name in removed:
            self.registry.unload(name, reason="removed from the repository")
        if changed or removed:
            await self.models_changed()

    async def poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_seconds)
            try:
                await self.poll_once()
            # A scan that fails (e.g. a directory vanishing mid-scan) is retried next time
            except Exception:
                log.exception(
                    "repository poll failed; retrying in %.1f s", self.settings.poll_seconds
                )

    async def stop(self) -> None:
        """Stop polling and wait for the background work started so far; then release the loader thread."""
        if self.poller is not None:
            self.poller.cancel()
            await asyncio.gather(self.poller, return_exceptions=True)
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.loader.shutdown(wait=True)
