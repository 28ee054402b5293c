"""The shift stages in process on the tiny experiment: hard subset, every set at every weight, tables, figure."""
import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from advsoup.cli import main
from advsoup.config import EXPERIMENTS_DIR, Paths, load_config, shift_reference_run, split_run_id
from advsoup.shift.suite import SuiteJob, load_sets, run_suite
from advsoup.robust.evaluate import clean_accuracy, load_run
from advsoup.robust.stream import partial_path
from advsoup.shift import evaluate as shift_evaluate
from advsoup.shift.evaluate import HardJob, ShiftJob, build_hard_subset, partial_key, run_shift
from advsoup.report.shift_tables import shift_figure, shift_tables
from advsoup.train import TrainJob, train


@pytest.fixture(scope="module")
def done(tmp_path_factory, prepared):
    """Tiny token and nominal runs, the reference, the suite and the hard subset, each shift stage once."""
    tmp = tmp_path_factory.mktemp("shift")
    cfg = load_config([EXPERIMENTS_DIR / "tiny.yaml"], [f"results_dir={tmp}/results",
                                                        f"data.prepared_dir={prepared.parent}"])
    paths = Paths(cfg)
    for run_id in ("token-s0", "nominal-s0"):
        _, run, seed = split_run_id(cfg, run_id)
        train(TrainJob(run_id, run, seed, cfg.data, cfg.model, cfg.train, paths.prepared, paths.run_dir(run_id),
                       paths.history_file(run_id)))
    run, train_cfg = shift_reference_run(cfg)
    train(TrainJob("shift_reference", run, cfg.shift.hard.seed, cfg.data, cfg.model, train_cfg, paths.prepared,
                   paths.shift_reference, paths.shift_reference / "train_log.csv"))
    run_suite(SuiteJob(paths.prepared, paths.shift_suite, cfg.shift))
    build_hard_subset(HardJob(paths.prepared, paths.shift_reference, cfg.model, cfg.shift.hard, cfg.shift.seed,
                              cfg.evaluate.batch_size, paths.shift_hard))
    out = {}
    for run_id in ("token-s0", "nominal-s0"):
        _, run, seed = split_run_id(cfg, run_id)
        out[run_id] = run_shift(ShiftJob(run_id, run, seed, cfg.model, cfg.evaluate, cfg.shift, paths.shift_suite,
                                         paths.shift_hard, paths.run_dir(run_id), paths.shift_file(run_id)))
    summary = shift_tables([paths.shift_file(r) for r in out], paths.tables, paths.shift_summary, "tiny")
    assert json.loads(paths.shift_summary.read_text())["experiment"] == "tiny"  # `advsoup where` checks it
    figure = shift_figure(paths.tables, paths.shift_summary, paths.figures / "shift.png")
    return cfg, paths, out, summary, figure


def test_hard_subset_is_what_the_reference_gets_wrong(done):
    cfg, paths, *_ = done
    entry, hard = load_sets(paths.shift_hard)["hard"]
    assert 0 < len(hard) <= cfg.shift.hard.max_images
    ref = load_run(paths.shift_reference, cfg.model, torch.device("cpu"))
    x, y = hard.tensors()
    assert clean_accuracy(ref, x, y, 0.0, 100, torch.device("cpu")) == 0.0
    assert 0.1 < entry["reference_test_acc"] < 1.0


def test_every_run_on_every_set_at_every_weight(done):
    cfg, paths, out, *_ = done
    token, nominal = out["token-s0"], out["nominal-s0"]
    assert set(token["sets"]) == {"clean", "gaussian_noise-3", "fog-3", "sketch", "hard"}
    assert list(token["sets"]["fog-3"]["acc"]) == ["0.00", "0.50", "1.00"]
    assert list(nominal["sets"]["fog-3"]["acc"]) == ["0.00"] and "adaptation" not in nominal["sets"]["fog-3"]
    assert json.loads(paths.shift_file("token-s0").read_text()) == json.loads(json.dumps(token))
    # the clean set's accuracy at w=0 is the plain clean accuracy on those images
    model = load_run(paths.run_dir("token-s0"), cfg.model, torch.device("cpu"))
    x, y = load_sets(paths.shift_suite, ["clean"])["clean"][1].tensors()
    assert token["sets"]["clean"]["acc"]["0.00"] == round(clean_accuracy(model, x, y, 0.0, 100, torch.device("cpu")), 5)
    groups = token["groups"]
    assert set(groups) == {"mean_corruption_s3", "gaussian_noise", "fog", "mean_corruption", "sketch", "hard",
                           "average"}
    mean = np.mean([token["sets"][s]["acc"]["1.00"] for s in ("gaussian_noise-3", "fog-3")])
    assert groups["mean_corruption_s3"]["acc"]["1.00"] == pytest.approx(mean, abs=1e-5)


def test_adaptation_numbers_are_paired_and_bounded_by_the_oracle(done):
    cfg, _, out, *_ = done
    for name, s in out["token-s0"]["sets"].items():
        assert len(s["adaptation"]) == cfg.shift.draws
        for d in s["adaptation"]:
            assert d["oracle_soup"] >= max(d["kshot_soup"], d["clean_mode"], d["robust_mode"])
            assert d["kshot_w"] in (0.0, 0.5, 1.0) and 0 <= d["adapter_finetune"] <= 1
    avg = out["token-s0"]["groups"]["average"]
    gain = np.array(avg["per_draw"]["kshot_soup"]) - np.array(avg["per_draw"]["clean_mode"])
    assert avg["adaptation"]["kshot_gain_over_clean"]["mean"] == pytest.approx(gain.mean(), abs=1e-4)


def test_an_interrupted_shift_job_continues_from_its_partial_file_to_the_uninterrupted_numbers(done, tmp_path,
                                                                                               monkeypatch):
    cfg, paths, *_ = done
    _, run, seed = split_run_id(cfg, "token-s0")
    job = ShiftJob("token-s0", run, seed, cfg.model, cfg.evaluate, cfg.shift, paths.shift_suite, paths.shift_hard,
                   paths.run_dir("token-s0"), tmp_path / "shift.json")
    scored, real, preempt = [], shift_evaluate._adapt, [True]

    def preempted_at_the_third_set(model, x, y, correct, loss, weights, name, *rest):
        scored.append(name)
        if preempt[0] and len(scored) == 3:
            raise RuntimeError("preempted")
        return real(model, x, y, correct, loss, weights, name, *rest)

    monkeypatch.setattr(shift_evaluate, "_adapt", preempted_at_the_third_set)
    with pytest.raises(RuntimeError, match="preempted"):
        run_shift(job)
    assert not job.out_file.exists()
    partial = json.loads(partial_path(job.out_file).read_text())
    assert partial["key"] == partial_key(job) and list(partial["units"]) == scored[:2]

    scored.clear()
    preempt[0] = False
    run_shift(job)
    uninterrupted = json.loads(paths.shift_file("token-s0").read_text())
    assert sorted(list(partial["units"]) + scored) == sorted(uninterrupted["sets"])  # finished: not scored again
    assert len(scored) == 3 and json.loads(job.out_file.read_text()) == uninterrupted
    assert not partial_path(job.out_file).exists()

    # a partial file of another shift config (here another k) is discarded, not mixed in
    other = ShiftJob(*[getattr(job, f) for f in ("run_id", "run", "seed", "model", "evaluate")],
                     replace(cfg.shift, k=cfg.shift.k + 1), *[getattr(job, f) for f in
                                                               ("suite_dir", "hard_dir", "run_dir", "out_file")])
    assert partial_key(other)["config_digest"] != partial_key(job)["config_digest"]
    partial_path(job.out_file).write_text(json.dumps({"key": partial_key(other), "units": {
        "clean": {"acc": {"0.00": 0.0}}}, "rng": {}}))
    scored.clear()
    run_shift(job)
    assert len(scored) == 5 and json.loads(job.out_file.read_text()) == uninterrupted


def test_tables_summary_and_figure(done):
    cfg, paths, out, summary, figure = done
    table = pd.read_csv(paths.tables / "shift.csv")
    assert set(table["run"]) == {"token-s0", "nominal-s0"}
    fog = table[(table["run"] == "token-s0") & (table["shift"] == "fog-3")]
    expected = {float(w): a for w, a in out["token-s0"]["sets"]["fog-3"]["acc"].items()}
    assert fog.set_index("w")["acc"].to_dict() == expected
    assert {"mean_corruption_s3", "average"} <= set(table["shift"])
    adapt = pd.read_csv(paths.tables / "shift_adaptation.csv")
    assert set(adapt["run"]) == {"token-s0"} and set(adapt["method"]) >= {"kshot_soup", "full_finetune"}
    draws = pd.read_csv(paths.tables / "shift_draws.csv")
    assert len(draws[(draws["shift"] == "average") & (draws["method"] == "kshot_soup")]) == cfg.shift.draws
    s = summary["variants"]["cotrain/token"]
    assert s["samples"] == cfg.shift.draws and s["k"] == cfg.shift.k
    assert s["kshot_gain_over_clean"]["mean"] == pytest.approx(
        out["token-s0"]["groups"]["average"]["adaptation"]["kshot_gain_over_clean"]["mean"], abs=1e-4)
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 20_000
