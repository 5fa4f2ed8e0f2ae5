"""benchmarks/time_to_accuracy.py: its command line and what it does when
training fails (the recipes themselves take minutes to half an hour and run
with nothing else running, so they are not trained here)."""

import pytest

from tests.conftest import load_benchmark_script


@pytest.fixture(scope="module")
def script():
    return load_benchmark_script("time_to_accuracy")


@pytest.mark.parametrize("misplaced", [["--keep", "runs/x"], ["--keep=runs/x"], ["--json", "r.json"]])
def test_own_options_after_the_data_set_are_refused_by_name(script, misplaced, capsys, monkeypatch):
    # Everything after the name goes to `keras-vit train`, which would fail
    # with its own usage error half a minute later.
    monkeypatch.setattr(script.subprocess, "run", lambda *a, **k: pytest.fail("train was started"))
    with pytest.raises(SystemExit) as exit_info:
        script.main(["fashion_mnist", "--epochs", "2"] + misplaced)
    assert exit_info.value.code == 2
    option = misplaced[0].split("=")[0]
    assert f"{option} must come before the data set's name" in capsys.readouterr().err


def test_a_failed_training_run_is_reported_in_one_line_and_not_recorded(script, tmp_path, capsys,
                                                                        monkeypatch):
    results = tmp_path / "results.jsonl"
    results.write_text('{"kept": true}\n')
    monkeypatch.setattr(script, "HERE", tmp_path)  # where results.jsonl is appended
    # A real `keras-vit train` that stops on a bad value (exit status 2).
    assert script.main(["--json", str(tmp_path / "r.json"), "digits", "--epochs", "0"]) == 2
    err = capsys.readouterr().err
    assert "keras-vit train failed with exit status 2" in err and "nothing recorded" in err
    assert results.read_text() == '{"kept": true}\n'
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("tta", ["flip", None])  # None: results.json of a run before the setting
def test_a_finished_run_is_judged_by_its_result_with_the_accuracy_without_tta_beside(
        script, tmp_path, capsys, monkeypatch, tta):
    import json
    import subprocess

    monkeypatch.setattr(script, "HERE", tmp_path)
    run = tmp_path / "run"
    results = {"test_accuracy": 0.9120, "epochs": 24, "num_params": 208010}
    if tta:
        results.update(tta=tta, test_accuracy_without_tta=0.9076)

    def train(command, **kwargs):  # what `keras-vit train` leaves behind
        assert command[command.index("--output") + 1] == str(run)
        run.mkdir()
        (run / "results.json").write_text(json.dumps(results))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(script.subprocess, "run", train)
    assert script.main(["--keep", str(run), "fashion_mnist"]) == 0
    out = capsys.readouterr().out
    record = json.loads((tmp_path / "results.jsonl").read_text())
    assert record["test_accuracy"] == 0.9120 and record["verdict"] == "PASS"
    if tta:
        assert "fashion_mnist: test accuracy 0.9120 with flip TTA (0.9076 without) in " in out
        assert record["tta"] == "flip" and record["test_accuracy_without_tta"] == 0.9076
    else:
        assert "fashion_mnist: test accuracy 0.9120 in " in out
        assert record["tta"] == "none" and record["test_accuracy_without_tta"] == 0.9120
