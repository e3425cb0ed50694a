"""Four processes tagging the same documents at once through the services layer lose and duplicate
nothing. Correctness only: the latency of a tag is measured by benchmarks/bench_tagging.py."""

from __future__ import annotations

import json
import subprocess
import sys

from dallmi_core.app import importer
from dallmi_core.app.services import open_services

LABEL = "billing"
TAGGER = """
import json, sys, time
from pathlib import Path
from dallmi_core.app.services import open_services
data_dir, project_id, go = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
docs = json.loads(sys.argv[4])
services = open_services(data_dir, autostart_worker=False)
print("ready", flush=True)
while not go.exists():
    time.sleep(0.01)
created = sum(services.store.tag(project_id, doc, "billing") for doc in docs)
services.close()
print(json.dumps({"created": created, "calls": len(docs)}), flush=True)
"""


def test_four_processes_racing_on_the_same_tags_lose_and_duplicate_nothing(tmp_path):
    services = open_services(tmp_path, autostart_worker=False)
    project = services.create_project("race", [LABEL, "login"])
    path = tmp_path / "docs.csv"
    path.write_text("id,text\n" + "".join(f"d{i},ticket number {i} about an invoice\n" for i in range(300)))
    importer.import_file(services.store, project.id, path)
    docs = services.store.document_ids(project.id, "target")
    halves = [docs[:150], docs[150:]]
    go = tmp_path / "go"
    procs = [  # two processes per half: every (document, label) pair is raced by two at once
        subprocess.Popen(
            [sys.executable, "-c", TAGGER, str(tmp_path), str(project.id), str(go), json.dumps(halves[i // 2])],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    assert [p.stdout.readline().strip() for p in procs] == ["ready"] * 4  # all imported, stores open
    go.touch()
    results = [json.loads(p.stdout.readline()) for p in procs]
    assert [p.wait(timeout=300) for p in procs] == [0] * 4
    assert sum(r["calls"] for r in results) == 600
    assert sum(r["created"] for r in results) == 300  # each raced pair created by exactly one of its two
    tagged = services.store.tags_by_label(project.id)[LABEL]
    assert sorted(tagged) == sorted(docs)  # none lost, none doubled
    assert len(services.store.annotations(project.id, include_deleted=True)) == 300
    assert services.store.integrity_check() == "ok"
    services.close()
