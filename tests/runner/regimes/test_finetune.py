"""FinetuneStages' record of its data: results' per_task and the files a resume re-hashes."""

from __future__ import annotations

import json
from pathlib import Path

from support.data import AG_LABELS, rows, write_benchmark

from migu.data.corpus import file_sha256
from migu.runner.config import build_run_config
from migu.runner.regimes import FinetuneStages


def test_info_and_data_files_come_from_each_tasks_provenance(tmp_path: Path) -> None:
    root = write_benchmark(tmp_path / "CL_Benchmark")
    (root / "SC/amazon/test.json").unlink()  # carved: both roles read train.json
    (root / "TC/agnews/dev.json").write_text(json.dumps(rows("TC/agnews dev", 6, AG_LABELS)))
    config = build_run_config(
        {"tasks": ["agnews", "amazon"], "data": {"train_n": 8, "test_n": 4, "val_n": 3}}
    )
    stages = FinetuneStages.load(config, ["agnews", "amazon"], root)
    info = stages.info()
    assert list(info) == ["agnews", "amazon"]
    assert json.dumps(info) == json.dumps({t.name: t.info for t in stages.tasks})  # what results store
    ag, am = root / "TC/agnews", root / "SC/amazon"
    expected = [ag / "labels.json", ag / "train.json", ag / "test.json", ag / "dev.json"]
    expected += [am / "labels.json", am / "train.json"]
    assert stages.data_files() == {str(p): file_sha256(p) for p in expected}
