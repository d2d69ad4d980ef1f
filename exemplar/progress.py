"""Progress reporting for long core work; the shells plug in a progress bar.

Implementations: `SilentProgress` (default). The CLI provides a tqdm-backed one.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Receives stage starts and item counts from long-running core functions."""

    def start(self, stage: str, total: int, unit: str = "ex") -> None: ...

    def advance(self, n: int) -> None: ...

    def finish(self) -> None: ...


class SilentProgress:
    """Reports nothing."""

    def start(self, stage: str, total: int, unit: str = "ex") -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def finish(self) -> None:
        pass
