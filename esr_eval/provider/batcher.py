"""Collects concurrent `generate()` calls on one event loop and runs them as bounded batches in a
worker thread (the engine's forward passes must not block the event loop)."""

from __future__ import annotations

import asyncio

import anyio

from esr_eval.steering.engine import GenerationRequest, GenerationResult, SteeringEngine


class Batcher:
    def __init__(self, engine: SteeringEngine, max_batch_size: int, gather_s: float = 0.02) -> None:
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.gather_s = gather_s
        self.pending: list[tuple[GenerationRequest, asyncio.Future]] = []
        self.draining = False

    async def submit(self, request: GenerationRequest) -> GenerationResult:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((request, future))
        if not self.draining:
            self.draining = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _gather(self, max_waits: int = 20) -> None:
        """Let the other samples of this step queue up: wait while requests keep arriving."""
        for _ in range(max_waits):
            seen = len(self.pending)
            await asyncio.sleep(self.gather_s)
            if len(self.pending) == seen or len(self.pending) >= self.max_batch_size:
                return

    async def _drain(self) -> None:
        try:
            while self.pending:
                await self._gather()
                batch, self.pending = self.pending[: self.max_batch_size], self.pending[self.max_batch_size :]
                try:
                    results = await anyio.to_thread.run_sync(self.engine.generate, [r for r, _ in batch])
                except Exception as err:  # every waiting sample sees the failure
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(err)
                else:
                    for (_, fut), result in zip(batch, results):
                        if not fut.done():
                            fut.set_result(result)
        finally:
            self.draining = False
