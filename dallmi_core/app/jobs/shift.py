"""The shift run: the Domain shift page's analysis of a finished adaptation run, in the worker.

Its settings ({"run", "projection", "limit"}, checked by shift_view.job_settings when it is queued)
name the adaptation run; the result goes to that run's analysis cache, where the page reads it.
Progress (the stage, documents embedded of the total) and cancels go through the job, page by page.
"""

from __future__ import annotations

from dallmi_core.app.jobs.job import Job


def run_shift(job: Job) -> tuple[None, dict]:
    """Compute (or find cached) the analysis; no model folder of its own, the counts as its metrics."""
    from dallmi_core.app import run_models, shift_view

    settings = dict(job.run.config.get("analysis") or {})
    try:
        result = shift_view.shift_analysis(
            job.store,
            int(settings["run"]),
            projection=settings.get("projection", "pca"),
            limit=int(settings.get("limit", shift_view.SHIFT_LIMIT)),
            report=job.report,
            check=job.check,
        )
    finally:
        run_models.release()  # the two models go with the job (the worker may train next)
    meta = result.meta
    return None, {
        "analysed_run": int(settings["run"]),
        "projection": meta["projection"],
        "embedded": {"source": meta["sampled_source"], "target": meta["sampled_target"]},
    }
