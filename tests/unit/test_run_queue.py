"""The run queue's order and its one-at-a-time rule: a quick analysis (a shift job someone waits for on
the Domain shift page) is claimed before training runs queued earlier, and a source fine-tuning is never
pending twice for a project, whether started anew or resumed."""

from __future__ import annotations

import pytest

from dallmi_core.errors import RunStateError


@pytest.fixture()
def project(store):
    return store.create_project("Support", ["billing", "login"])


def test_a_shift_analysis_is_claimed_before_training_runs_queued_earlier(store, project):
    adapt, finetune = store.enqueue_run(project.id, "adapt", {}), store.enqueue_run(project.id, "finetune-source", {})
    shift = store.enqueue_run(project.id, "shift", {})
    assert [store.claim_next_run(i).id for i in (1, 2, 3)] == [shift, adapt, finetune]


def test_an_interrupted_run_still_resumes_before_a_queued_analysis(store, project):
    adapt = store.enqueue_run(project.id, "adapt", {})
    store.claim_next_run(1)
    store.finish_run(adapt, "interrupted")  # its worker stopped: it resumes first
    shift = store.enqueue_run(project.id, "shift", {})
    assert [store.claim_next_run(i).id for i in (2, 3)] == [adapt, shift]


def test_a_cancelled_fine_tuning_is_not_resumed_while_a_newer_one_is_pending(store, project):
    first = store.enqueue_run(project.id, "finetune-source", {})
    store.claim_next_run(1)
    store.request_cancel(first)
    store.finish_run(first, "cancelled")
    second = store.enqueue_run(project.id, "finetune-source", {})  # allowed: the first is no longer pending
    with pytest.raises(RunStateError, match=f"run {second} \\(finetune-source\\) is already queued"):
        store.requeue_run(first)
    assert store.get_run(first).status == "cancelled"
    store.request_cancel(second)
    assert store.requeue_run(first).status == "interrupted"  # nothing else pending now
    assert store.requeue_run(first).status == "interrupted"  # itself pending does not count against it
    adapt = store.enqueue_run(project.id, "adapt", {})
    store.request_cancel(adapt)
    store.enqueue_run(project.id, "adapt", {})
    assert store.requeue_run(adapt).status == "interrupted"  # adaptations may run side by side


def test_the_resume_button_is_not_offered_for_a_fine_tuning_while_a_newer_one_is_pending(tmp_path):
    from dallmi_core.app.services import open_services

    with open_services(tmp_path / "data", autostart_worker=False) as svc:
        store = svc.store
        project = store.create_project("Support", ["billing"])
        first = store.enqueue_run(project.id, "finetune-source", {})
        store.claim_next_run(1)
        checkpoint = tmp_path / "checkpoint"
        checkpoint.mkdir()
        (checkpoint / "trainer_state.pt").write_bytes(b"x")
        store.set_checkpoint(first, str(checkpoint))
        store.request_cancel(first)
        store.finish_run(first, "cancelled")
        assert svc.run_status(first).can_resume
        second = store.enqueue_run(project.id, "finetune-source", {})
        assert not svc.run_status(first).can_resume  # the Adapt page offers no Resume button then
        with pytest.raises(RunStateError, match=f"run {second} \\(finetune-source\\) is already queued"):
            svc.resume_run(first)
        store.request_cancel(second)
        assert svc.run_status(first).can_resume
