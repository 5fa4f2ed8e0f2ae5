"""benchmarks/targets.py: the verdicts it gives on benchmark results.

The benchmarks themselves take most of an hour and run with nothing else
running, so they are not run here; these tests feed `check` results in
the format the scripts save and compare every verdict with the issue's
thresholds."""

import json

import pytest

from tests.conftest import load_benchmark_script


@pytest.fixture(scope="module")
def targets():
    return load_benchmark_script("targets")


def _inference(**img_per_s):
    """Inference results: img/s per `system_batch`, peak memory 1000 MB
    unless `rss_system_batch` says otherwise."""
    rows = []
    for key, value in img_per_s.items():
        if key.startswith("rss_"):
            continue
        system, batch = key.rsplit("_", 1)
        rows.append(dict(system=system, batch=int(batch), img_per_s=value,
                         peak_rss_mb=img_per_s.get(f"rss_{key}", 1000.0)))
    return rows


def _passing_inference():
    values = {}
    for batch, timm, hub in ((1, 4.0, 4.5), (8, 4.5, 5.2)):
        values.update({f"timm_{batch}": timm, f"keras_hub_{batch}": hub,
                       f"keras_vit_{batch}": hub * 1.11, f"keras_vit_call_{batch}": hub * 1.2,
                       f"keras_vit_savedmodel_{batch}": hub * 1.15, f"keras_vit_bf16_{batch}": timm * 2.1,
                       f"matmul_floor_{batch}": 9.0})
    return values


TRAINING = [
    dict(system=system, case=case, batch=batch, img_per_s=speed)
    for case, batch, ours, theirs in (("vit_s16", 16, 6.5, 5.8), ("vit_s16", 32, 6.8, 5.7), ("tiny", 128, 154, 117))
    for system, speed in (("keras_vit", ours), ("keras_vit_bf16", ours * 1.8), ("timm", theirs))
]
AGREEMENT = {"rows": [
    dict(model="digits run", images=359, agreement=1.0, accuracy_float32=0.98, accuracy_bf16=0.98),
    dict(model="ViT-B/16 at 224, random weights", images=64, agreement=0.98),
]}
TIME = [dict(data="digits", test_accuracy=0.9861, wall_time_s=139.0, verdict="PASS")]


def _verdicts(rows):
    return {row["what"]: row["verdict"] for row in rows}


def test_every_target_met(targets):
    rows = targets.check(_inference(**_passing_inference()), TRAINING, AGREEMENT, TIME)
    verdicts = _verdicts(rows)
    assert targets.all_met(rows)
    # 3 paths x 2 batches x 2 references, bf16 speed, one trained model's
    # agreement (the random-weight row is not checked), 3 training cases,
    # memory, one time-to-accuracy record.
    assert len(rows) == 12 + 1 + 1 + 3 + 1 + 1
    assert verdicts["inference batch 1, predict_on_batch, vs keras-hub"] == "met"
    assert not any("random weights" in what for what in verdicts)
    assert verdicts["time to accuracy, digits"] == "recorded"


@pytest.mark.parametrize("change, what", [
    # 1.0996x keras-hub at batch 1 through predict_on_batch: just short of 1.1x.
    ({"keras_vit_1": 4.5 * 1.0996}, "inference batch 1, predict_on_batch, vs keras-hub"),
    # 1.14x timm at batch 8 through the SavedModel (and keras-hub is slower).
    ({"keras_vit_savedmodel_8": 4.5 * 1.14, "keras_hub_8": 4.0}, "inference batch 8, SavedModel, vs timm"),
    ({"keras_vit_bf16_8": 4.5 * 1.99}, "mixed_bfloat16 inference batch 8 vs timm's float32"),
    ({"rss_keras_vit_8": 1201.0, "rss_timm_8": 1000.0}, "peak memory, inference batch 8, vs timm"),
])
def test_a_missed_inference_target_is_not_met(targets, change, what):
    values = {**_passing_inference(), **change}
    rows = targets.check(_inference(**values), TRAINING, AGREEMENT, TIME)
    verdicts = _verdicts(rows)
    assert verdicts[what] == "NOT MET"
    assert [w for w, v in verdicts.items() if v != "met" and v != "recorded"] == [what]
    assert not targets.all_met(rows)


@pytest.mark.parametrize("fast_bfloat16, verdict", [
    (False, "n/a: no fast bfloat16 on this CPU"),  # e.g. Intel AVX-512-BF16 without AMX
    (True, "NOT MET"),
    (None, "NOT MET"),  # results saved before the CPU was recorded
])
def test_bfloat16_speed_is_checked_only_where_bfloat16_is_fast(targets, fast_bfloat16, verdict):
    inference = _inference(**{**_passing_inference(), "keras_vit_bf16_8": 4.5 * 0.6})
    for row in inference:
        if row["system"] == "keras_vit_bf16" and fast_bfloat16 is not None:
            row["bfloat16_cpu"] = fast_bfloat16
    rows = targets.check(inference, TRAINING, AGREEMENT, TIME)
    assert _verdicts(rows)["mixed_bfloat16 inference batch 8 vs timm's float32"] == verdict
    assert targets.all_met(rows) is (fast_bfloat16 is False)
    # Agreement is still checked on such a CPU.
    disagreeing = {"rows": [dict(AGREEMENT["rows"][0], agreement=0.98)]}
    assert not targets.all_met(targets.check(inference, TRAINING, disagreeing, TIME))


def test_a_missed_training_or_agreement_target_is_not_met(targets):
    slow = [dict(r, img_per_s=5.8 * 1.09) if (r["system"], r["batch"]) == ("keras_vit", 16) else r
            for r in TRAINING]
    disagreeing = {"rows": [dict(AGREEMENT["rows"][0], agreement=0.9899)]}
    verdicts = _verdicts(targets.check(_inference(**_passing_inference()), slow, disagreeing, TIME))
    assert verdicts["model.fit vit_s16 batch 16 vs timm"] == "NOT MET"
    assert verdicts["model.fit vit_s16 batch 32 vs timm"] == "met"
    assert verdicts["bfloat16 top-1 agreement, digits run"] == "NOT MET"


def test_missing_or_failed_results_are_not_met(targets):
    inference = [r for r in _inference(**_passing_inference()) if r["system"] != "keras_hub"]
    failed = [dict(r, error="worker died") if r["system"] == "timm" and r.get("case") == "tiny" else r
              for r in TRAINING]
    rows = targets.check(inference, failed, None, [])
    verdicts = _verdicts(rows)
    assert verdicts["inference batch 1, direct call, vs keras-hub"] == "MISSING"
    assert verdicts["inference batch 1, direct call, vs timm"] == "met"
    assert verdicts["model.fit tiny batch 128 vs timm"] == "MISSING"
    assert verdicts["bfloat16 top-1 agreement, trained models"] == "MISSING"
    assert verdicts["time to accuracy"] == "MISSING"
    assert not targets.all_met(rows)


def test_check_reads_the_results_the_scripts_save(targets, tmp_path, capsys):
    save = targets._common.save_json
    save(tmp_path / "inference.json", _inference(**_passing_inference()))
    save(tmp_path / "training-tiny.json", [r for r in TRAINING if r["case"] == "tiny"])
    save(tmp_path / "training-vit_s16.json", [r for r in TRAINING if r["case"] == "vit_s16"])
    save(tmp_path / "bf16.json", [AGREEMENT])
    save(tmp_path / "time_to_accuracy-digits.json", TIME[0])
    assert json.loads((tmp_path / "inference.json").read_text())[0]["system"] == "timm"
    assert not list(tmp_path.glob("*.tmp"))
    assert targets.main(["--check", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "all met" in out and "| 3 | model.fit tiny batch 128 vs timm | 1.316x | >= 1.1x | met |" in out

    save(tmp_path / "training-tiny.json", [dict(r, img_per_s=117 * 1.05) if r["system"] == "keras_vit" else r
                                            for r in TRAINING if r["case"] == "tiny"])
    assert targets.main(["--check", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "NOT all met" in out and "| 3 | model.fit tiny batch 128 vs timm | 1.050x | >= 1.1x | NOT MET |" in out


def test_check_of_a_directory_without_results_is_an_error(targets, tmp_path, capsys):
    with pytest.raises(SystemExit) as raised:
        targets.main(["--check", str(tmp_path)])
    assert raised.value.code == 2
    assert f"--check {tmp_path}: no inference.json there" in capsys.readouterr().err
