"""One exit-code contract for every command: 0 done, 1 the work failed on its data, 2 bad usage or params."""

from __future__ import annotations

import json

import pytest

import synth
from crackclf import cli, config, tracking
from httpserver import free_port

STAGES = ("download", "preprocess", "train", "evaluate", "predict")


def test_help_states_the_contract(capsys):
    for argv in (["--help"], ["predict", "--help"], ["train", "--help"]):
        with pytest.raises(SystemExit):
            cli.main(argv)
        out = capsys.readouterr().out
        assert "Exit codes" in out and "bad usage or params" in out and "130" in out


@pytest.mark.parametrize("stage", STAGES)
def test_bad_params_exit_2_before_any_work(stage, tmp_path, capsys):
    (tmp_path / "params.yaml").write_text(json.dumps({"train": {"batch_sise": 64}}))
    args = [stage, "--params", str(tmp_path / "params.yaml")] + (["x.jpg"] if stage == "predict" else [])
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"crackclf {stage}: error: {tmp_path / 'params.yaml'}: train.batch_sise: unknown key (misspelt?)"]


def test_yes_is_refused_for_a_number_and_kept_for_a_switch(tmp_path, capsys):
    """YAML reads ``yes`` as true, which lax pydantic would take as 1: ``augment_zoom: yes`` would train
    at a zoom of 100 %. A switch (``augment``) still takes it."""
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  augment: yes\n  augment_zoom: yes\n")
    assert cli.main(["train", "--params", str(params)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"crackclf train: error: {params}: train.augment_zoom: got true")
    params.write_text("train:\n  augment: yes\n  augment_zoom: 0.5\n")
    assert config.load(params).train.augment is True


@pytest.fixture
def unreachable_store(monkeypatch):
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    return url


def test_an_unreachable_store_is_exit_1_in_every_command_that_needs_it(unreachable_store, prepared_dir,
                                                                       tiny_model_path, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(synth.TINY_PARAMS))
    common = ["--params", str(params)]
    run_file = tmp_path / "run.json"
    tracking.write_run_file(run_file, {"run_id": "0" * 32, "experiment_id": "1", "tracking_uri": unreachable_store,
                                       "registered_model": "crackclf", "model_version": 1})
    commands = {
        "train": ["train", str(prepared_dir), "--model", str(tmp_path / "m.keras"), *common],
        "evaluate": ["evaluate", str(prepared_dir), "--model", str(tiny_model_path), "--run-file", str(run_file),
                     "--metrics", str(tmp_path / "eval.json"), "--plots-dir", str(tmp_path / "plots"),
                     "--threshold-file", str(tmp_path / "threshold.json"), *common],
        "predict": ["predict", str(tmp_path), "--model", "models:/crackclf@champion", *common],
    }
    for name, argv in commands.items():
        assert cli.main(argv) == 1, name
        lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("crackclf")]
        assert lines[-1].startswith(f"crackclf {name}: error: ") and "unreachable" in lines[-1], (name, lines)
    assert (tmp_path / "eval.json").is_file()  # evaluate still wrote its metrics before it failed
    assert not (tmp_path / "m.keras").exists()  # train failed before any work
