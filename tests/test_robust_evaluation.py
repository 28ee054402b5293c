"""Robust evaluation a robustness researcher can trust, on a small token-adapter ViT trained on real Fashion-MNIST.

PGD's guarantees (ball, image range, determinism, model state), the
gradient-masking checks (they pass on a real model and fail on a masked one),
AutoAttack never above PGD, and agreement with a maintained package's PGD
(IBM's Adversarial Robustness Toolbox).
"""
import dataclasses
import json
import re
import time

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from advsoup.robust import autoattack
from advsoup.report.aggregate import aggregate
from advsoup.robust.attacks import pgd
from advsoup.cli import main
from advsoup.report.where import _print_robustness
from advsoup.config import EXPERIMENTS_DIR, AttackConfig, ConfigError, Paths, load_config, split_run_id
from advsoup.data.prepared import load_split
from advsoup.robust.evaluate import clean_accuracy, load_run, robust_accuracy
from advsoup.models import build_model
from advsoup.robust.checks import FAIL, PASS, Curves, autoattack_checks, masking_checks, status
from advsoup.train import TrainJob, train

CPU = torch.device("cpu")
# A ViT of width 32 and depth 2 (4x cheaper than the demo's) keeps training to ~20 s; the evaluation
# protocol under test is the default one: PGD-10 at l-inf eps 0.1, step 2.5 * eps / steps.
SETTINGS = ["model.vit.embed_dim=32", "model.vit.depth=2", "model.vit.num_heads=2", "data.train_size=6400",
            "data.test_size=1000", "train.epochs=3", "train.warmup_epochs=0.2",
            "evaluate.attack.steps=10", "evaluate.attack.step_size=0.025", "evaluate.robust_subset=200"]


@pytest.fixture(scope="module")
def token(tmp_path_factory, prepared):
    """A small ViT co-trained with the class-token adapter: 300 steps of 64 images (PGD-2, eps 0.1)."""
    tmp = tmp_path_factory.mktemp("token")
    overrides = [f"results_dir={tmp}/results", f"data.prepared_dir={prepared.parent}", "launcher.executor=inline",
                 f"launcher.log_dir={tmp}/logs"] + SETTINGS
    cfg = load_config([EXPERIMENTS_DIR / "tiny.yaml"], overrides)
    _, run, seed = split_run_id(cfg, "token-s0")
    paths = Paths(cfg)
    t0 = time.time()
    train(TrainJob("token-s0", run, seed, cfg.data, cfg.model, cfg.train, paths.prepared, paths.run_dir("token-s0"),
                   paths.history_file("token-s0")))
    print(f"trained the token model in {time.time() - t0:.1f} s")
    model = load_run(paths.run_dir("token-s0"), cfg.model, CPU)
    x, y = load_split(prepared, "test", cfg.data.test_size).tensors()
    return model, x, y, cfg, overrides


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 1.5)])
def test_pgd_stays_in_the_ball_the_image_range_and_reaches_the_edge(token, norm, eps):
    model, x, y, _, _ = token
    a = AttackConfig(norm=norm, eps=eps, steps=10, step_size=2.5 * eps / 10, restarts=3)
    w = torch.tensor([0.0, 1.0]).repeat(32)  # per-sample soup weights survive the restarts' subsets
    x_adv = pgd(model, x[:64], y[:64], a, w=w, generator=torch.Generator().manual_seed(0))
    delta = (x_adv - x[:64]).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps * (1 + 1e-5)
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    # Projection is not over-conservative: the attack uses (nearly) its whole budget.
    assert float(size.median()) > 0.9 * eps


def test_pgd_is_deterministic_under_a_seed(token):
    model, x, y, cfg, _ = token
    for norm, eps in (("linf", 0.1), ("l2", 1.5)):
        a = AttackConfig(norm=norm, eps=eps, steps=3, step_size=eps / 2, restarts=2)
        runs = [pgd(model, x[:48], y[:48], a, w=1.0, generator=torch.Generator().manual_seed(s)) for s in (7, 7, 8)]
        assert torch.equal(runs[0], runs[1])
        assert not torch.equal(runs[0], runs[2])
    acc = robust_accuracy(model, x[:200], y[:200], 1.0, cfg.evaluate, CPU)
    assert acc == robust_accuracy(model, x[:200], y[:200], 1.0, cfg.evaluate, CPU)


def test_the_training_attack_leaves_bn_statistics_alone_in_either_model_mode(tiny_cfg, prepared):
    """Dual BN (AdvProp) ResNet: eval mode attacks the running statistics, train mode the batch ones;
    neither moves a buffer, and the model's train/eval flag is restored."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg.model, "resnet", "batchnorm").train()
    x, y = load_split(prepared, "train", 32).tensors()
    model(x, 1.0)  # give the running statistics something other than their initial values
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = tiny_cfg.train.attack
    adv = {mode: pgd(model, x, y, a, w=1.0, generator=torch.Generator().manual_seed(1), model_mode=mode)
           for mode in ("eval", "train")}
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not torch.equal(adv["eval"], adv["train"])  # train mode did attack another network
    with pytest.raises(ValueError, match="attack model mode"):
        pgd(model, x, y, a, model_mode="inference")


def test_masking_checks_pass_on_the_trained_model(token):
    model, x, y, cfg, _ = token
    ev = dataclasses.replace(cfg.evaluate, robustness=dataclasses.replace(cfg.evaluate.robustness, tolerance=0.005))
    curves = Curves(model, x[:200], y[:200], ev, CPU)  # forgives one image in 200
    grids, checks = masking_checks(curves, [1.0])
    assert [c["status"] for c in checks] == [PASS] * 3, checks
    eps = grids["1.00"]["eps_grid"]
    assert [p["eps"] for p in eps] == [0.0, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5]
    assert eps[0]["robust_acc"] == round(clean_accuracy(model, x[:200], y[:200], 1.0, 200, CPU), 5)
    assert eps[-1]["robust_acc"] <= 0.02 < eps[3]["robust_acc"]  # robust at eps 0.1, broken at 0.5
    steps = grids["1.00"]["steps_grid"]
    assert [p["steps"] for p in steps] == [10, 50] and steps[0]["robust_acc"] == eps[3]["robust_acc"]


class GradientMasked(nn.Module):
    """The trained model behind input quantisation to 256 levels: same predictions, zero input gradient."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, w=0.0):
        return self.model(torch.round(x * 255) / 255, w)


def test_masking_checks_fail_on_a_gradient_masked_model(token):
    """Run as the pipeline runs them (random start on, the evaluation PGD): the masked model is caught."""
    model, x, y, cfg, _ = token
    assert cfg.evaluate.attack.random_start
    masked = GradientMasked(model)
    grids, checks = masking_checks(Curves(masked, x[:100], y[:100], cfg.evaluate, CPU), [1.0])
    print({c["name"]: (c["status"], c["detail"]) for c in checks})
    verdict = {c["name"]: c["status"] for c in checks}
    assert verdict["large_eps_near_zero"] == FAIL  # PGD never moves past its random start: "robust" at eps 0.5
    assert status(checks)["status"] == FAIL and "large_eps_near_zero (w=1.00)" in status(checks)["failed"]


def test_a_pgd_far_above_autoattack_fails_the_masking_checks():
    """PGD 6 points above AutoAttack on the same images: the sweep's attack is too weak for the model."""
    evaluation = {"adapter": "token", "autoattack": {
        "attack": {"name": "AutoAttack-custom", "subset": 200}, "pgd_attack": {"name": "PGD-10"},
        "clean_mode": {"w": 0.0, "robust_acc": 0.20, "pgd_robust_acc": 0.21},
        "robust_mode": {"w": 1.0, "robust_acc": 0.56, "pgd_robust_acc": 0.62}}}
    checks = autoattack_checks(evaluation, tol=0.005, max_gap=0.015)
    verdict = {(c["name"], c["w"]): c["status"] for c in checks}
    assert verdict == {("autoattack_not_above_pgd", 0.0): PASS, ("pgd_near_autoattack", 0.0): PASS,
                       ("autoattack_not_above_pgd", 1.0): PASS, ("pgd_near_autoattack", 1.0): FAIL}
    assert status(checks)["failed"] == ["pgd_near_autoattack (w=1.00)"]


def test_autoattack_is_never_above_pgd(token):
    """APGD-CE and APGD-T: the standard version's FAB-T and Square would take minutes on CPU."""
    model, x, y, cfg, _ = token
    n = 40
    a = cfg.evaluate.attack
    aa_cfg = dataclasses.replace(cfg.evaluate.autoattack, version="custom", attacks=["apgd-ce", "apgd-t"])
    aa_ok, rec = autoattack.robust_flags(model, x[:n], y[:n], 1.0, a, aa_cfg, 100, CPU)
    pgd_acc, aa_acc = robust_accuracy(model, x[:n], y[:n], 1.0, cfg.evaluate, CPU), float(aa_ok.float().mean())
    print(f"robust mode on {n} images: PGD-10 {pgd_acc:.3f}, {rec['name']} {rec['attacks']} {aa_acc:.3f}")
    assert aa_acc <= pgd_acc
    assert rec["subset"] == n and rec["eps"] == a.eps and rec["steps"] == {"apgd-ce": 100, "apgd-t": 100}
    # the package's seeding does not leak into the caller's random stream
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    autoattack.robust_flags(model, x[:8], y[:8], 1.0, a, aa_cfg, 8, CPU)
    assert torch.equal(torch.rand(3), expected)


def test_the_apgd_ensemble_counts_an_image_robust_only_if_it_survives_both_losses(token, monkeypatch):
    """evaluate.attack.method: apgd-ce+apgd-dlr, on the trained model: per image the AND of APGD-CE's and APGD-DLR's
    flags (so never above either), the second loss run only on the images the first left robust; the record names
    both."""
    from advsoup.robust import stream
    from advsoup.robust.evaluate import pgd_record, robust_flags

    model, x, y, cfg, _ = token
    n = 60
    ev = {m: dataclasses.replace(cfg.evaluate, attack=dataclasses.replace(cfg.evaluate.attack, method=m, steps=10))
          for m in ("apgd-ce", "apgd-dlr", "apgd-ce+apgd-dlr")}
    flags = {m: robust_flags(model, x[:n], y[:n], 1.0, e, CPU) for m, e in ev.items()}
    print({m: int(f.sum()) for m, f in flags.items()})
    assert torch.equal(flags["apgd-ce+apgd-dlr"], flags["apgd-ce"] & flags["apgd-dlr"])
    assert 0 < int(flags["apgd-ce+apgd-dlr"].sum()) < n
    seen = []
    real = stream.autoattack.apgd_flags

    def spy(model_, xb, yb, w, attack, device, seed=0):
        seen.append((attack.method, len(yb)))
        return real(model_, xb, yb, w, attack, device, seed)

    monkeypatch.setattr(stream.autoattack, "apgd_flags", spy)
    robust_flags(model, x[:n], y[:n], 1.0, ev["apgd-ce+apgd-dlr"], CPU)
    assert seen == [("apgd-ce", n), ("apgd-dlr", int(flags["apgd-ce"].sum()))]
    assert pgd_record(ev["apgd-ce+apgd-dlr"].attack, n)["name"] == "APGD-CE-10+APGD-DLR-10"
    assert load_config([EXPERIMENTS_DIR / "tiny.yaml"], ["evaluate.attack.method=apgd-ce+apgd-dlr"])


def test_apgd_t_in_the_ensemble_finds_what_the_untargeted_losses_miss(token):
    """evaluate.attack.method: apgd-ce+apgd-t (AutoAttack's first two attacks, fewer steps): APGD-T runs on the
    images APGD-CE left robust, towards evaluate.attack.target_classes runner-up classes; more targets never
    leave more images robust, and the record says how many targets ran."""
    from advsoup.robust.evaluate import pgd_record, robust_flags

    model, x, y, cfg, _ = token
    n = 60

    def flags(method, **kw):
        attack = dataclasses.replace(cfg.evaluate.attack, method=method, steps=10, **kw)
        return robust_flags(model, x[:n], y[:n], 0.0, dataclasses.replace(cfg.evaluate, attack=attack), CPU), attack

    ce, _ = flags("apgd-ce")
    one, _ = flags("apgd-ce+apgd-t", target_classes=1)
    nine, attack = flags("apgd-ce+apgd-t")
    print({"apgd-ce": int(ce.sum()), "+apgd-t x1": int(one.sum()), "+apgd-t x9": int(nine.sum())})
    assert not (nine & ~ce).any() and not (nine & ~one).any()  # an AND with APGD-CE; 9 targets include the first
    assert int(nine.sum()) < int(ce.sum())  # the targeted loss breaks images APGD-CE-10 left robust
    record = pgd_record(attack, n)
    assert record["name"] == "APGD-CE-10+APGD-T-10" and record["target_classes"] == 9
    assert "target_classes" not in pgd_record(dataclasses.replace(attack, method="apgd-ce+apgd-dlr"), n)


@pytest.mark.parametrize("overrides, key", [
    (["evaluate.attack.method=apgd-t+apgd-t"], "evaluate.attack.method"),
    (["evaluate.attack.method=apgd-ce+pgd"], "evaluate.attack.method"),
    (["evaluate.attack.method=apgd-ce", "evaluate.attack.target_classes=3"], "evaluate.attack.target_classes"),
    (["evaluate.attack.method=apgd-t", "evaluate.attack.target_classes=0"], "evaluate.attack.target_classes"),
    (["train.attack.target_classes=3"], "train.attack.target_classes"),
])
def test_a_bad_sweep_attack_names_its_key(overrides, key):
    with pytest.raises(ConfigError, match=re.escape(f"'{key}'")):
        load_config([EXPERIMENTS_DIR / "tiny.yaml"], overrides)


def test_pgd_agrees_with_the_adversarial_robustness_toolbox(token):
    """Same model, images, eps, steps, step size and random start: within 1.5 points of ART's PGD."""
    from art.attacks.evasion import ProjectedGradientDescentPyTorch
    from art.estimators.classification import PyTorchClassifier

    model, x, y, cfg, _ = token
    n, a = 500, cfg.evaluate.attack
    ours = robust_accuracy(model, x[:n], y[:n], 1.0, cfg.evaluate, CPU)
    clf = PyTorchClassifier(autoattack.AtWeight(model, 1.0), loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                            nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")
    art_pgd = ProjectedGradientDescentPyTorch(clf, norm=np.inf, eps=a.eps, eps_step=a.step_size, max_iter=a.steps,
                                              num_random_init=1, batch_size=cfg.evaluate.batch_size, verbose=False)
    np.random.seed(0)  # ART draws its random start from numpy
    x_art = art_pgd.generate(x[:n].numpy(), y[:n].numpy())
    theirs = float((clf.predict(x_art).argmax(1) == y[:n].numpy()).mean())
    print(f"robust mode on {n} images: ours PGD-10 {ours:.3f}, ART PGD-10 {theirs:.3f}")
    assert float(np.abs(x_art - x[:n].numpy()).max()) <= a.eps + 1e-6
    assert 0.2 < ours and abs(ours - theirs) <= 0.015


def test_evaluate_and_robustness_stages_name_every_robust_number(token, capsys):
    """The CLI stages on the trained run, then the summary and `advsoup where`: AutoAttack numbers with their
    attack, and a failed masking check named, not averaged away."""
    model, x, y, cfg, overrides = token
    tiny = str(EXPERIMENTS_DIR / "tiny.yaml")
    paths = Paths(cfg)
    assert main(["evaluate", "--config", tiny, "--run", "token-s0", *overrides]) == 0
    ev = json.loads(paths.eval_file("token-s0").read_text())
    aa = ev["autoattack"]  # tiny: APGD-CE on the first 50 images
    assert aa["attack"]["name"] == "AutoAttack-custom" and aa["attack"]["subset"] == 50
    assert aa["attack"]["steps"] == {"apgd-ce": 100} and aa["attack"]["eps"] == ev["attack"]["eps"]
    assert aa["pgd_attack"] == {**ev["attack"], "subset": 50}
    for mode in ("clean_mode", "robust_mode"):
        assert aa[mode]["robust_acc"] <= aa[mode]["pgd_robust_acc"] + 0.005
    assert main(["robustness", "--config", tiny, "--run", "token-s0", *overrides]) == 0
    rob = json.loads(paths.robustness_file("token-s0").read_text())
    assert rob["n_checks"] == 7 and rob["attack"]["subset"] == 100  # 3 PGD curves, 2 x 2 against AutoAttack
    assert rob["status"] == PASS, rob["failed"]
    assert (paths.run_dir("token-s0") / "robustness.log").is_file()

    summary = aggregate("tiny", [paths.eval_file("token-s0")], [], paths.summary, paths.tables,
                        robustness_files=[paths.robustness_file("token-s0")])
    assert summary["masking_checks"] == {"status": PASS, "failed": [], "skipped": [], "n_passed": 7, "n_checks": 7}
    assert summary["runs"]["token-s0"]["autoattack"] == aa
    row = pd.read_csv(paths.tables / "runs.csv").iloc[0]
    assert row["autoattack"] == "AutoAttack-custom linf eps=0.1 on 50 images"
    assert row["pgd_attack"] == "PGD-10 linf eps=0.1 on 200 images" and row["masking_checks"] == PASS

    failing = paths.metrics_dir("token-s0") / "robustness_failing.json"
    rob["checks"][1]["status"] = FAIL
    failing.write_text(json.dumps({**rob, **status(rob["checks"])}))
    summary = aggregate("tiny", [paths.eval_file("token-s0")], [], paths.summary, paths.tables,
                        robustness_files=[failing])
    assert summary["masking_checks"]["status"] == FAIL
    assert summary["masking_checks"]["failed"] == ["token-s0: large_eps_near_zero (w=1.00)"]
    _print_robustness(summary)
    out = capsys.readouterr().out
    assert "gradient-masking checks: FAIL (6 of 7 passed" in out
    assert "FAILED   token-s0: large_eps_near_zero (w=1.00)" in out


def test_config_refuses_weak_or_malformed_robust_evaluation():
    tiny = EXPERIMENTS_DIR / "tiny.yaml"
    for overrides, key in [(["evaluate.attack.steps=1"], "evaluate.attack.step_size"),
                           (["evaluate.autoattack.version=rand"], "evaluate.autoattack.version"),
                           (["evaluate.autoattack.attacks=[]"], "evaluate.autoattack.attacks"),
                           (["evaluate.autoattack.attacks=[pgd]"], "evaluate.autoattack.attacks[0]"),
                           (["evaluate.autoattack.version=standard", "evaluate.autoattack.attacks=[square]"],
                            "evaluate.autoattack.attacks"),
                           (["evaluate.robustness.eps_multiples=[1.0,0.5]"], "evaluate.robustness.eps_multiples"),
                           (["train.attack_model_mode=inference"], "train.attack_model_mode")]:
        with pytest.raises(ConfigError, match=r"command line.*" + re.escape(key)):
            load_config([tiny], overrides)
