"""Long measurements say where they are and how long they will still take (worked by hand)."""

import logging

from proto_lightning.evaluation.progress import Progress


def test_progress_logs_rate_limited_lines_with_a_linear_estimate_of_the_time_left(caplog):
    now = [0.0]
    progress = Progress("LIME explanations", 40, every=10.0, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="proto_lightning.evaluation.progress")
    now[0] = 5.0
    progress.advance(5)  # 5 s since the start: under `every`, no line
    now[0] = 20.0
    progress.advance(5)  # 10 of 40 in 20 s: 2 s an image, 30 left -> 60 s
    now[0] = 25.0
    progress.advance(10)  # 5 s since the last line: none
    now[0] = 80.0
    progress.advance(20)  # done: the total time
    assert [r.getMessage() for r in caplog.records] == [
        "LIME explanations: 10/40 images, 20 s, about 60 s left",
        "LIME explanations: 40 images in 80 s",
    ]
