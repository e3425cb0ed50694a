"""`dallmi projects|import|export` on the store the app uses: counts printed as words and as JSON,
and an export that carries the metadata and gold labels."""

from __future__ import annotations

import json

import pandas as pd

from dallmi_core.app.services import open_services
from dallmi_core.cli.main import main


def test_store_commands_script_a_project_end_to_end(tmp_path, capsys):
    data = str(tmp_path / "data")
    assert main(["projects", "create", "--name", "Tickets", "--labels", "billing,login", "--data-dir", data]) == 0
    assert "created project 1 'Tickets' with 2 labels" in capsys.readouterr().out
    target = tmp_path / "target.csv"
    target.write_text("id;text;channel\n1;parcel late;app\n2;parcel late;web\n3;cannot sign in;app\n", encoding="utf-8")
    assert (
        main(["import", "--project", "Tickets", "--file", str(target), "--domain", "target", "--data-dir", data]) == 0
    )
    assert "3 imported, 0 repeated, 0 attached to existing" in capsys.readouterr().out
    gold = tmp_path / "gold.csv"
    gold.write_text("id,text,labels\ng1,cannot sign in,login\ng2,new one,billing\n", encoding="utf-8")
    argv = ["import", "--project", "1", "--file", str(gold), "--domain", "eval", "--json", "--data-dir", data]
    assert main(argv) == 0
    counts = json.loads(capsys.readouterr().out)
    assert {k: counts[k] for k in ("imported", "repeated", "attached")} == {"imported": 1, "repeated": 0, "attached": 1}
    assert (
        main(["import", "--project", "Tickets", "--file", str(target), "--domain", "target", "--data-dir", data]) == 0
    )
    assert "0 imported, 3 repeated" in capsys.readouterr().out

    assert main(["projects", "list", "--json", "--data-dir", data]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["name"] == "Tickets" and listed["documents"] == {"source": 0, "target": 3, "eval": 1}
    out = tmp_path / "docs.csv"
    assert main(["export", "--project", "Tickets", "--what", "documents", "--out", str(out), "--data-dir", data]) == 0
    frame = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert frame[["id", "gold_labels", "channel"]].values.tolist() == [
        ["1", "", "app"],
        ["2", "", "web"],
        ["3", "login", "app"],
        ["g2", "billing", ""],
    ]
    assert main(["export", "--project", "Nope", "--what", "documents", "--out", str(out), "--data-dir", data]) == 2
    assert "no project 'Nope'" in capsys.readouterr().err
    with open_services(data, autostart_worker=False) as svc:  # the app's store: the same rows
        assert svc.store.count_documents(1)["target"] == 3
