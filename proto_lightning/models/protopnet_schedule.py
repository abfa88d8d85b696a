"""ProtoPNet's training schedule as a plan of Lightning epochs (cfchen-duke/ProtoPNet main.py + settings.py).

Official: epochs 0..warm-1 are warm-up (backbone frozen), later epochs joint; after every epoch e with
e >= push_start and e % push_every == 0, the prototypes are pushed and the last layer alone is
trained for `last_layer_iterations` passes. Each of those passes is one Lightning epoch here, so the
plan maps every Lightning epoch to a phase and the official epoch it belongs to; a resumed run finds
its phase from the epoch counter alone. The push runs at the start of the first last-layer epoch, so
the checkpoint written after that epoch already holds the pushed prototypes.
"""

from __future__ import annotations

from dataclasses import dataclass

PHASES = ("warm", "joint", "last")


@dataclass(frozen=True)
class Step:
    """One Lightning epoch of the plan."""

    phase: str  # warm | joint | last
    epoch: int  # the official epoch it belongs to
    push: bool = False  # push prototypes before this epoch's training


@dataclass(frozen=True)
class ProtoPNetSchedule:
    """Official defaults: 1000 epochs, 5 warm, push from epoch 10 every 10, 20 last-layer iterations."""

    epochs: int = 1000
    warm_epochs: int = 5
    push_start: int = 10
    push_every: int = 10
    last_layer_iterations: int = 20
    push_at_end: bool = False  # also push after the final epoch (so the final model is pushed)

    def push_epochs(self) -> list[int]:
        """Official epochs after which a push happens."""
        epochs = [
            e for e in range(self.epochs) if e >= self.push_start and e % self.push_every == 0
        ]
        if self.push_at_end and (not epochs or epochs[-1] != self.epochs - 1):
            epochs.append(self.epochs - 1)
        return epochs

    def plan(self) -> list[Step]:
        """Every Lightning epoch in order."""
        pushes = set(self.push_epochs())
        steps = []
        for e in range(self.epochs):
            steps.append(Step("warm" if e < self.warm_epochs else "joint", e))
            if e in pushes:
                steps += [
                    Step("last", e, push=(i == 0))
                    for i in range(max(1, self.last_layer_iterations))
                ]
        return steps
