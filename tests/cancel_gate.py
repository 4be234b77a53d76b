"""A gate that holds a running job at a flow step until a cancel arrives, for the cancel tests.

It spies on the real step report and cancel (both still run): a step from `from_step` on waits
until some `CancelToken` is cancelled, so a test's cancel always lands while the job runs, however
fast the tiny model or slow the client is. No sleeps; the wait is bounded.
"""

from __future__ import annotations

import threading
from typing import Any

from selva.progress import ProgressReport
from selva.spec import CancelToken


class CancelGate:
    """`running` is set at the first step, `cancelled` by the first cancel; `steps` lists the steps seen.

    `report_first` reports a step before it waits (a page can then show it); else after.
    """

    def __init__(
        self, monkeypatch: Any, *, from_step: int = 0, report_first: bool = False, timeout: float = 120.0
    ):
        self.running, self.cancelled, self.steps = threading.Event(), threading.Event(), []
        report_step, cancel_token = ProgressReport.step, CancelToken.cancel
        gate = self

        def step(self, pipe, index, t, state):
            gate.steps.append(index)
            gate.running.set()
            if report_first:
                report_step(self, pipe, index, t, state)
            if index >= from_step:
                assert gate.cancelled.wait(timeout), "the cancel never reached the job"
            if not report_first:
                report_step(self, pipe, index, t, state)

        def cancel(self):
            cancel_token(self)
            gate.cancelled.set()

        monkeypatch.setattr(ProgressReport, "step", step)
        monkeypatch.setattr(CancelToken, "cancel", cancel)
