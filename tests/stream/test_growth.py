"""The Distill regenerating lizard played by the service: it grows, regrows after erasing, rotates."""

from __future__ import annotations

import asyncio

import numpy as np

from tests.stream.client import Frame, Viewer, watch
from tests.stream.conftest import StreamServer

FAST = {"fps": 60, "steps_per_frame": 4}  # 240 CA steps per second: grown in about a second


async def paused_at(v: Viewer, step: int) -> Frame:
    """Play to `step`, pause, and return the last frame (nothing moves after it)."""
    await v.frame_at_step(step)
    await v.send(cmd="pause")
    await v.event("state")
    await v.quiet(0.4)
    return v.last_frame


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_pattern_grows_from_the_seed(server: StreamServer, lizard: str) -> None:
    async def scenario() -> None:
        async with watch(server.url(lizard, **FAST)) as v:
            coverage = [(f := await v.frame()).coverage]
            while f.step < 200:
                coverage.append((f := await v.frame()).coverage)
            assert coverage[0] < 0.001  # one cell
            assert coverage[-1] > 0.1  # the lizard covers a good part of the 72x72 grid
            early = coverage[: len(coverage) // 4]
            assert max(early) < coverage[-1]

    asyncio.run(scenario())


def test_erase_removes_pixels_and_the_lizard_regrows(server: StreamServer, lizard: str) -> None:
    async def scenario() -> None:
        async with watch(server.url(lizard, **FAST)) as v:
            grown = await paused_at(v, 300)
            alive = grown.rgba[..., 3] > 25
            ys, xs = np.nonzero(alive)
            cx, cy, r = float(xs.mean()), float(ys.mean()), 12.0
            yy, xx = np.mgrid[: grown.height, : grown.width]
            inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
            assert alive[inside].mean() > 0.3, "the circle should cover part of the lizard"
            await v.send(cmd="erase", x=cx, y=cy, r=r)
            erased = await v.frame()
            assert erased.step == grown.step  # edits while paused show at once, without a step
            assert (erased.rgba[inside][:, 3] == 0).all()
            assert (erased.rgba[inside][:, :3] == 255).all()  # white where nothing lives
            await v.send(cmd="play")
            regrown = await v.frame_at_step(grown.step + 400)
            assert (regrown.rgba[..., 3] > 25)[inside].mean() > 0.6 * alive[inside].mean()

    asyncio.run(scenario())


def test_rotate_turns_the_pattern(server: StreamServer, lizard: str) -> None:
    async def scenario() -> None:
        async with watch(server.url(lizard, **FAST)) as upright, watch(server.url(lizard, **FAST)) as turned:
            await turned.frame()
            await turned.send(cmd="rotate", angle=90)
            assert (await turned.event("state"))["angle"] == 90.0
            a, b = await asyncio.gather(paused_at(upright, 250), paused_at(turned, 250))
            mask_a, mask_b = a.rgba[..., 3] > 25, b.rgba[..., 3] > 25
            assert iou(mask_a, mask_b) < 0.6, "rotating should change the frame"
            # np.rot90 turns counter-clockwise as displayed (row 0 on top), as a positive angle does.
            rotated = iou(np.rot90(mask_a), mask_b)
            assert rotated > iou(mask_a, mask_b) + 0.15, "the turned lizard should be the upright one turned"

    asyncio.run(scenario())
