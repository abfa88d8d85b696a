"""What a run folder says about its run: finished, failed (and why), or unfinished (killed or running).

A stage that ends writes `FINISHED` (its summary); one that fails writes `FAILED` (the one-line
error), adds that line to the end of its log, and removes the large files it wrote (over
`LARGE_FILE_BYTES`: an imported black box, a feature store, an artifact), except checkpoints, from
which a training run resumes. `proto-lightning runs` lists every run folder with its status.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proto_lightning.stages.common import StageResult

log = logging.getLogger(__name__)

FINISHED, FAILED = "FINISHED", "FAILED"
LARGE_FILE_BYTES = 1 << 20
KEPT_FOLDERS = ("checkpoints",)  # a failed or killed training run resumes from these
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


# third-party lines that tell the user nothing about the run
ADVERTISING = ("💡 Tip:",)
LIBRARY_DEPRECATIONS = (".*LeafSpec.*",)  # Lightning's own use of torch's pytree API


class DropAdvertising(logging.Filter):
    """Drops a library's promotional log lines (Lightning's litmodels tip)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(ADVERTISING)


def configure_logging() -> None:
    """Log INFO and up once each, in Hydra's format, before Hydra's own configuration takes over."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


def quiet_libraries() -> None:
    """Once Lightning is imported: each of its lines once (the `lightning` package adds a console
    handler of its own, beside the root's that every line also reaches), no advertising, and no
    deprecation warnings about library internals that a user cannot act on."""
    lightning = logging.getLogger("lightning")
    for handler in list(lightning.handlers):
        lightning.removeHandler(handler)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(DropAdvertising())
    for message in LIBRARY_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message)


def _rank_zero() -> bool:
    """Whether this process writes run-level files (rank 0, or the only process)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0))) == 0


def mark_finished(result: StageResult) -> None:
    """Write `<run>/FINISHED` with the stage's summary."""
    if _rank_zero() and result.run_dir.is_dir():
        (result.run_dir / FINISHED).write_text(result.summary() + "\n")


def mark_failed(run_dir: Path, message: str, started: float) -> list[Path]:
    """Mark a failed run: `<run>/FAILED` with `message`, the message at the end of its log file, and
    the large files written since `started` (a time stamp) removed, checkpoints kept. Returns them."""
    if not (_rank_zero() and run_dir.is_dir()):
        return []
    (run_dir / FAILED).write_text(message + "\n")
    record = logging.LogRecord(
        __name__, logging.ERROR, __file__, 0, f"run failed: {message}", (), None
    )
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):  # the run's log file, not the console
            handler.emit(record)
    removed = [
        path
        for path in run_dir.rglob("*")
        if path.is_file()
        and not path.is_symlink()
        and path.stat().st_size > LARGE_FILE_BYTES
        and path.stat().st_mtime >= started
        and not set(KEPT_FOLDERS) & set(path.relative_to(run_dir).parts)
    ]
    for path in removed:
        path.unlink()
    return removed


@dataclass
class RunStatus:
    """One run folder and what it says about its run."""

    folder: Path
    status: str  # finished | failed | unfinished
    detail: str  # the error of a failed run; empty otherwise


def run_statuses(root: Path) -> list[RunStatus]:
    """Every run folder under `root` (a folder Hydra made: it has `.hydra/`), oldest first."""
    folders = sorted(p.parent for p in Path(root).rglob(".hydra") if p.is_dir())
    statuses = []
    for folder in folders:
        if (folder / FAILED).is_file():
            statuses.append(RunStatus(folder, "failed", (folder / FAILED).read_text().strip()))
        elif (folder / FINISHED).is_file():
            statuses.append(RunStatus(folder, "finished", ""))
        else:
            statuses.append(RunStatus(folder, "unfinished", "killed, or still running"))
    return statuses
