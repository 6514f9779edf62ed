"""The loss history a job shows: the worker's logic, stored as the record's `loss_history` and `loss_every`."""

from __future__ import annotations

from collections.abc import Iterable

LOSS_HISTORY_POINTS = 200  # at most this many (iteration, loss) points are kept per job


class LossHistory:
    """Loss every `every` iterations; when full, every other point goes and `every` doubles."""

    def __init__(self, points: Iterable[tuple[int, float]] = (), every: int = 1,
                 max_points: int = LOSS_HISTORY_POINTS):
        self.points, self.every, self.max_points = [tuple(p) for p in points], every, max_points

    def add(self, iteration: int, loss: float) -> None:
        if iteration % self.every:
            return
        self.points.append((iteration, loss))
        if len(self.points) > self.max_points:
            self.every *= 2
            self.points = [p for p in self.points if p[0] % self.every == 0]

    def truncate(self, last_iteration: int) -> None:
        """Forget points after the iteration a run starts from: they will be trained again."""
        self.points = [p for p in self.points if p[0] <= last_iteration]
