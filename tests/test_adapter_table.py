"""results/tables/adapters.csv and the adapter/soup figures, from synthetic metric files of a study grid."""
import json

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from advsoup.report import figures
from advsoup.report.aggregate import aggregate
from advsoup.cli import main
from advsoup.report.where import _print_variants
from advsoup.config import EXPERIMENTS_DIR

ATTACK = {"name": "PGD-10", "norm": "linf", "eps": 0.1, "steps": 10, "step_size": 0.025, "restarts": 1,
          "random_start": True, "subset": 100}
AA = {"name": "AutoAttack-custom", "norm": "linf", "eps": 0.1, "attacks": ["apgd-ce", "apgd-t"], "subset": 50}
GRID = [("vit", "nominal", "none", 0), ("vit", "adversarial", "none", 0), ("vit", "cotrain", "none", 0),
        ("vit", "cotrain", "token", 64), ("vit", "cotrain", "layernorm", 1152),
        ("resnet", "nominal", "none", 0), ("resnet", "adversarial", "none", 0),
        ("resnet", "cotrain", "batchnorm", 1568)]


def _clean(seed, i):
    return 0.80 + 0.01 * i + 0.002 * seed


def _robust(seed, i):
    return 0.20 + 0.03 * i - 0.004 * seed


def _soup(seed, i, w):
    # test: clean + robust peaks at w=0.3 for seed 0 and at w=0.7 for seed 1; their mean peaks at w=0.7
    peak = 0.3 if seed == 0 else 0.7
    bonus = {0: 0.05, 1: 0.08}[seed]
    return {"w": w, "clean_acc": round(_clean(seed, i) - 0.05 * w, 5),
            "robust_acc": round(_robust(seed, i) + 0.05 * w + (bonus if abs(w - peak) < 1e-9 else 0.0), 5)}


def _val_soup(seed, i, w):
    # validation: clean + robust peaks at w=0.3 for both seeds, where test does not
    return {"w": w, "clean_acc": round(_clean(seed, i) - 0.05 * w, 5),
            "robust_acc": round(_robust(seed, i) + 0.05 * w + (0.1 if w == 0.3 else 0.0), 5)}


@pytest.fixture
def study(tmp_path):
    """Two seeds of every variant; soups.json for the soupable ones."""
    evals, soups, checks = [], [], []
    for i, (family, training, adapter, params) in enumerate(GRID):
        for seed in (0, 1):
            run = f"{family}_{training}_{adapter}-s{seed}"
            base = {"run": run, "training": training, "adapter": adapter, "family": family, "seed": seed,
                    "domain_parameters": params, "test_images": 300, "attack": ATTACK}
            d = tmp_path / "metrics" / run
            d.mkdir(parents=True)
            (d / "eval.json").write_text(json.dumps({
                **base, "clean_mode": {"w": 0.0, "clean_acc": _clean(seed, i), "robust_acc": 0.01},
                "robust_mode": {"w": 1.0, "clean_acc": 0.7, "robust_acc": _robust(seed, i)}}))
            if adapter == "token":  # AutoAttack a few points below PGD
                rec = json.loads((d / "eval.json").read_text())
                rec["autoattack"] = {"attack": AA, "pgd_attack": {**ATTACK, "subset": 50},
                                     "clean_mode": {"w": 0.0, "robust_acc": 0.0, "pgd_robust_acc": 0.01},
                                     "robust_mode": {"w": 1.0, "robust_acc": _robust(seed, i) - 0.02,
                                                     "pgd_robust_acc": _robust(seed, i) + 0.01}}
                (d / "eval.json").write_text(json.dumps(rec))
            evals.append(d / "eval.json")
            failed = ["eps_monotone (w=1.00)"] if (adapter, seed) == ("layernorm", 1) else []
            (d / "robustness.json").write_text(json.dumps(
                {"run": run, "status": "fail" if failed else "pass", "failed": failed, "skipped": [],
                 "n_passed": 3 - len(failed), "n_checks": 3}))
            checks.append(d / "robustness.json")
            if training == "cotrain" and adapter != "none":
                weights = (0.0, 0.3, 0.7, 1.0)
                (d / "soups.json").write_text(json.dumps(
                    {**base, "soup": [_soup(seed, i, w) for w in weights], "validation_images": 1000,
                     "validation": [_val_soup(seed, i, w) for w in weights]}))
                soups.append(d / "soups.json")
    aggregate("synthetic", evals, soups, tmp_path / "summary.json", tmp_path / "tables", checks,
              train_attack_model_mode="eval")
    return tmp_path


def test_adapter_table_rows_are_variants_with_mean_and_std_over_seeds(study):
    table = pd.read_csv(study / "tables" / "adapters.csv")
    assert table["variant"].tolist() == [
        "nominal", "adversarial", "cotrain/none", "cotrain/token", "cotrain/layernorm",
        "resnet:nominal", "resnet:adversarial", "resnet:cotrain/batchnorm"]
    row = table.set_index("variant").loc["cotrain/token"]
    i = 3
    assert (row.family, row.training, row.adapter, row.domain_parameters, row.seeds) == \
        ("vit", "cotrain", "token", 64, 2)
    assert row.clean_acc_clean_mode_mean == pytest.approx((_clean(0, i) + _clean(1, i)) / 2)
    assert row.clean_acc_clean_mode_std == pytest.approx(0.002 / 2 ** 0.5, abs=1e-5)  # sample std of 2 seeds
    assert row.robust_acc_robust_mode_mean == pytest.approx((_robust(0, i) + _robust(1, i)) / 2)
    # The validated soup: one weight per variant, the best seed-mean of clean + robust on VALIDATION (0.3),
    # reported by its TEST accuracies; the oracle soup: the best seed-mean on test (0.7), named oracle.
    assert row.val_soup_w == 0.3 and row.oracle_soup_w == 0.7
    for choice, w in (("val_soup", 0.3), ("oracle_soup", 0.7)):
        at = [_soup(s, i, w) for s in (0, 1)]
        assert row[f"{choice}_clean_acc_mean"] == pytest.approx(sum(a["clean_acc"] for a in at) / 2)
        assert row[f"{choice}_robust_acc_mean"] == pytest.approx(sum(a["robust_acc"] for a in at) / 2, abs=1e-5)
    assert row.oracle_soup_robust_acc_std > 0.01
    assert "best_soup_w" not in table.columns
    # the curves' table holds the test sweeps only; the validation sweeps sit apart
    assert len(pd.read_csv(study / "tables" / "soups.csv")) == len(pd.read_csv(study / "tables" / "soups_validation.csv"))
    assert pd.read_csv(study / "tables" / "soups.csv").merge(pd.DataFrame([_soup(0, i, 0.3)])).shape[0] == 1
    # AutoAttack beside PGD on the same 50 images, the subset in the column names; the masking checks.
    assert row.aa_robust_acc_robust_mode_n50_mean == pytest.approx(row.robust_acc_robust_mode_mean - 0.02)
    assert row.pgd_robust_acc_robust_mode_n50_mean == pytest.approx(row.robust_acc_robust_mode_mean + 0.01)
    assert row.autoattack == "AutoAttack-custom linf eps=0.1 on 50 images"
    assert row.pgd_attack == "PGD-10 linf eps=0.1 on 100 images"
    assert row.train_attack_model_mode == "eval"
    by_variant = table.set_index("variant")
    assert pd.isna(by_variant.loc["nominal", "train_attack_model_mode"])
    assert pd.isna(by_variant.loc["nominal", "aa_robust_acc_robust_mode_n50_mean"])
    assert by_variant.loc["cotrain/layernorm", "masking_checks"] == "fail"  # one seed of two failed
    assert (table[table["variant"] != "cotrain/layernorm"]["masking_checks"] == "pass").all()
    summary = json.loads((study / "summary.json").read_text())
    assert summary["masking_checks"]["failed"] == ["vit_cotrain_layernorm-s1: eps_monotone (w=1.00)"]
    token = summary["variants"]["cotrain/token"]
    assert token["aa_robust_acc_robust_mode"]["mean"] == pytest.approx(row.aa_robust_acc_robust_mode_n50_mean)
    assert token["pgd_robust_acc_robust_mode_on_aa_images"]["mean"] == \
        pytest.approx(row.pgd_robust_acc_robust_mode_n50_mean)
    assert token["aa_images"] == 50 and token["val_soup"]["w"] == 0.3 and token["oracle_soup"]["w"] == 0.7
    run = summary["runs"]["vit_cotrain_token-s0"]
    assert run["val_soup"]["w"] == 0.3 and run["val_soup"]["chosen_on"].startswith("validation (1000")
    assert run["oracle_soup"]["w"] == 0.3 and run["oracle_soup"]["chosen_on"] == "test (oracle)"
    unsouped = table[table["variant"].isin(["nominal", "adversarial", "cotrain/none", "resnet:nominal"])]
    assert unsouped["val_soup_w"].isna().all() and unsouped["oracle_soup_clean_acc_mean"].isna().all()


def test_figures_show_every_soupable_variant_and_the_references(study, monkeypatch):
    drawn, close = [], plt.close
    monkeypatch.setattr(figures.plt, "close", lambda fig: drawn.append(fig))  # keep the figures to inspect
    figures.soup_curve(study / "summary.json", study / "tables", study / "soup_curve.png")
    figures.adapter_figure(study / "summary.json", study / "tables", study / "adapters.png")
    soup_fig, adapter_fig = drawn
    assert (study / "soup_curve.png").stat().st_size > 10_000 and (study / "adapters.png").stat().st_size > 10_000

    # One row per family; the trade-off panel (right) holds its soups and its runs without adapter.
    (_, vit_tradeoff), (_, resnet_tradeoff) = [row for row in zip(*[iter(soup_fig.axes)] * 2)][:2]
    legend = lambda ax: sorted(t.get_text() for t in ax.get_legend().get_texts())  # noqa: E731
    assert legend(vit_tradeoff) == ["reference: adversarial", "reference: cotrain/none", "reference: nominal",
                                    "soup: cotrain/layernorm", "soup: cotrain/token"]
    assert legend(resnet_tradeoff) == ["reference: resnet:adversarial", "reference: resnet:nominal",
                                       "soup: resnet:cotrain/batchnorm"]
    labels = [t.get_text() for t in adapter_fig.axes[0].get_yticklabels()]
    assert labels[3] == "cotrain/token  (64 domain params)" and len(labels) == len(GRID)
    assert "robust = PGD-10 linf eps=0.1" in adapter_fig._suptitle.get_text()
    legend_texts = [t.get_text() for t in adapter_fig.axes[1].get_legend().get_texts()]
    assert "AutoAttack (mean over seeds; AutoAttack-custom linf eps=0.1 on 50 images)" in legend_texts
    assert "PGD on AutoAttack's 50 images (mean over seeds)" in legend_texts
    assert "soup chosen on validation (mean over seeds)" in legend_texts
    for fig in drawn:
        close(fig)


def test_where_prints_each_variant_over_its_seeds(study, capsys):
    _print_variants(json.loads((study / "summary.json").read_text()))
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert len(lines) == len(GRID)
    i = 3
    clean = 100 * (_clean(0, i) + _clean(1, i)) / 2
    aa = 100 * ((_robust(0, i) + _robust(1, i)) / 2 - 0.02)
    assert f"2 seeds,    64 domain params: clean mode {clean:5.1f} +- 0.1% clean" in lines["cotrain/token"]
    assert f"on 50 images AA {aa:5.1f} +- 0.3% / PGD " in lines["cotrain/token"]  # side by side, same images
    assert "AA" not in lines["nominal"]
