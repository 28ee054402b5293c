"""The real shift sets (ImageNet-C, -A, -R, -Sketch) on small generated trees in their published layouts,
through the config-time check, the shift-real stage and its report; and the colour shift suite."""
import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from imagecorruptions import corruption_dict
from PIL import Image

from advsoup import checkpoint as ckpt
from advsoup.atomic import sha256
from advsoup.config import (BENCHMARK_CORRUPTIONS, EvaluateConfig, ModelConfig, RunConfig, ShiftConfig, VitConfig,
                            ConfigError, load_config)
from advsoup.data.prepared import MANIFEST
from advsoup.models import build_model
from advsoup.report.real_shifts import ALEXNET_ERR, real_shift_figure, real_shift_tables
from advsoup.shift.adapt import predict_batches
from advsoup.shift.layout import RealShiftMissing, check_real_sets, class_indices, imagenet_synsets, set_wnids
from advsoup.robust.stream import partial_path
from advsoup.shift import real as real_shift
from advsoup.shift.real import RealShiftJob, run_real_shift
from advsoup.shift.suite import corrupt_image, generate_suite, load_sets

SYNSETS = imagenet_synsets()
R_WNIDS = set_wnids("imagenet-r")[:2]  # goldfish, great white shark: ImageNet-1k indices 1 and 2
A_WNIDS = set_wnids("imagenet-a")[:2]
SKETCH_WNIDS = SYNSETS[:2]
IMAGES_PER_CLASS = 3


def _jpegs(folder, ext, seed):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(IMAGES_PER_CLASS):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"img_{i}.{ext}")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """One shared root in the published layouts: ImageNet-C (2 corruptions x 2 severities), A, R, Sketch."""
    return write_published_layouts(tmp_path_factory.mktemp("imagenet_shifts"), ("fog", "contrast"), (1, 3))


def write_published_layouts(root, corruptions, severities):
    """ImageNet-C (<corruption>/<severity>/<wnid>/), -A and -R (<wnid>/*.jpg), Sketch (sketch/<wnid>/*.JPEG)."""
    for c in corruptions:
        for s in severities:
            for j, w in enumerate(SKETCH_WNIDS):
                _jpegs(root / "imagenet-c" / c / str(s) / w, "JPEG", j)
    for folder, wnids, ext in (("imagenet-a", A_WNIDS, "jpg"), ("imagenet-r", R_WNIDS, "jpg"),
                               ("sketch", SKETCH_WNIDS, "JPEG")):
        for j, w in enumerate(wnids):
            _jpegs(root / folder / w, ext, j)
    return root


def _shift(root="", **real):
    shift = ShiftConfig(imagenet_root=str(root), k=2, draws=3)
    shift.real.workers = 0
    shift.real.batch_size = 4
    shift.real.imagenet_c.corruptions = ["fog", "contrast"]
    shift.real.imagenet_c.severities = [1, 3]
    shift.real.imagenet_c.subset = 0
    for key, value in real.items():
        name, field = key.split("__")
        setattr(getattr(shift.real, name), field, value)
    return shift


# ---- where the sets are: checked before any job starts --------------------------------------

def test_configured_sets_are_found_and_left_out_sets_skipped(root, tmp_path):
    assert list(check_real_sets(_shift(root))) == ["imagenet-c", "imagenet-a", "imagenet-r", "imagenet-sketch"]
    assert list(check_real_sets(_shift(root, imagenet_a__enabled=False))) == \
        ["imagenet-c", "imagenet-r", "imagenet-sketch"]
    assert check_real_sets(_shift()) == {}  # no root at all: the small-scale study, nothing to check
    own = check_real_sets(_shift(imagenet_r__root=str(root / "imagenet-r")))  # one set by its own root
    assert own == {"imagenet-r": root / "imagenet-r"}


@pytest.mark.parametrize("overrides, needle", [
    ({"imagenet_c__severities": [1, 5]}, "folder '{root}/imagenet-c/fog/5' does not exist"),
    ({"imagenet_c__corruptions": ["snow"]}, "folder '{root}/imagenet-c/snow/1' does not exist"),
    ({"imagenet_a__root": "{root}/imagenet-r"}, "holds folders that are not imagenet-a classes"),
    ({"imagenet_sketch__root": "{root}/nowhere"}, "folder '{root}/nowhere' does not exist"),
])
def test_a_missing_or_misplaced_set_names_the_path_and_the_layout(root, overrides, needle):
    shift = _shift(root, **{k: v.format(root=root) if isinstance(v, str) else v for k, v in overrides.items()})
    with pytest.raises(RealShiftMissing) as exc:
        check_real_sets(shift)
    msg = str(exc.value)
    assert needle.format(root=root) in msg
    assert "<wnid>/*." in msg and ".enabled=false" in msg  # the layout it expected, and how to leave it out


def test_an_unextracted_class_folder_is_refused(tmp_path):
    (tmp_path / "sketch" / SKETCH_WNIDS[0]).mkdir(parents=True)
    with pytest.raises(RealShiftMissing, match="no image file"):
        check_real_sets(_shift(tmp_path, imagenet_c__enabled=False, imagenet_a__enabled=False,
                               imagenet_r__enabled=False))


def test_real_subset_keys_are_validated():
    base = ["runs={a: {training: nominal, adapter: none}}", "data.train_size=500"]
    with pytest.raises(ConfigError, match="shift.real.imagenet_r.subset"):
        load_config([], base + ["shift.k=32", "shift.real.imagenet_r.subset=32"])
    with pytest.raises(ConfigError, match=r"shift.real.imagenet_c.corruptions\[0\]"):
        load_config([], base + ["shift.real.imagenet_c.corruptions=[fogg]"])
    assert load_config([], base).shift.real.imagenet_c.corruptions == list(BENCHMARK_CORRUPTIONS)


# ---- ImageNet-A and -R: the 200-class restriction on known logits ---------------------------

class KnownLogits(torch.nn.Module):
    """Every image gets the same logits: tench (not an ImageNet-R class) first, then great white shark."""

    def forward(self, x, w=0.0):
        logits = torch.zeros(len(x), 1000)
        logits[:, 0] = 10.0  # tench
        logits[:, 2] = 5.0   # great white shark
        logits[:, 1] = 4.0   # goldfish
        return logits


def test_imagenet_r_predictions_are_restricted_to_its_200_classes():
    idx = class_indices("imagenet-r")
    assert len(idx) == 200 and 0 not in idx and {1, 2} <= set(idx)
    x, y = torch.zeros(2, 3, 8, 8), torch.tensor([2, 1])
    correct, loss = predict_batches(KnownLogits(), [(x, y)], [0.0], torch.device("cpu"), idx)
    assert correct.tolist() == [[True, False]]  # the shark wins among the 200; tench is out
    ref = torch.nn.functional.cross_entropy(KnownLogits()(x)[:, idx], torch.tensor([idx.index(2), idx.index(1)]),
                                            reduction="none")
    assert np.allclose(loss[0], ref.numpy())  # the softmax runs over the 200 classes only
    unmasked, _ = predict_batches(KnownLogits(), [(x, y)], [0.0], torch.device("cpu"))
    assert unmasked.tolist() == [[False, False]]


# ---- the shift-real stage on a tiny 1000-way model -------------------------------------------

MODEL = ModelConfig(img_size=32, in_chans=3, num_classes=1000, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225],
                    vit=VitConfig(patch_size=8, embed_dim=16, depth=1, num_heads=2))
COTRAIN, NOMINAL = RunConfig(training="cotrain", adapter="token"), RunConfig(training="nominal", adapter="none")
EVALUATE = EvaluateConfig(soup_weights=[0.0, 0.5, 1.0], threads=1)


def _run_dir(path, run, bias=None):
    torch.manual_seed(0)
    model = build_model(MODEL, "vit", run.adapter)
    with torch.no_grad():
        for _, p in model.adversarial_parameters():
            p.add_(torch.randn_like(p))  # clean and adversarial tokens differ: the soups differ
        if bias is not None:
            head = model.net.head
            head.weight.zero_()
            head.bias.copy_(bias)
    ckpt.save_model(path, model, {"family": "vit", "adapter": run.adapter})
    return path


def _job(tmp_path, run_dir, run, set_name, shift):
    return RealShiftJob(f"{run.adapter}-s0", run, 0, MODEL, EVALUATE, shift, set_name, run_dir,
                        tmp_path / "metrics" / f"{run.adapter}-s0" / f"shift_{set_name}.json")


@pytest.mark.parametrize("set_name, wnids, amp", [("imagenet-r", R_WNIDS, "none"), ("imagenet-a", A_WNIDS, "none"),
                                                   ("imagenet-a", A_WNIDS, "bf16")])
def test_stage_masks_a_and_r_on_known_logits(root, tmp_path, set_name, wnids, amp):
    """A head that always prefers tench (outside both 200-class sets), then the first class of the tree:
    restricted to the set, the first class's images are right and the second's wrong, at every weight."""
    index = {w: i for i, w in enumerate(SYNSETS)}
    bias = torch.zeros(1000)
    bias[0], bias[index[wnids[0]]] = 100.0, 10.0
    shift = _shift(root)
    shift.real.amp = amp
    out = run_real_shift(_job(tmp_path, _run_dir(tmp_path / "run", COTRAIN, bias), COTRAIN, set_name, shift))
    rec = out["sets"][set_name]
    assert rec["size"] == 2 * IMAGES_PER_CLASS and rec["class_folders"] == 2 and out["classes"] == 200
    assert rec["acc"] == {"0.00": 0.5, "0.50": 0.5, "1.00": 0.5}  # unrestricted, tench would make it 0


def test_stage_scores_every_imagenet_c_setting_at_every_weight(root, tmp_path):
    shift = _shift(root, imagenet_c__subset=4)
    out = run_real_shift(_job(tmp_path, _run_dir(tmp_path / "run", COTRAIN), COTRAIN, "imagenet-c", shift))
    assert list(out["sets"]) == ["imagenet-c/fog-1", "imagenet-c/fog-3", "imagenet-c/contrast-1",
                                 "imagenet-c/contrast-3"]
    assert out["weights"] == [0.0, 0.5, 1.0] and out["methods"] == ["clean_mode", "robust_mode", "kshot_soup",
                                                                    "oracle_soup"]
    assert out["cost"] == {"images": 16, "forward_passes": 48}  # the subset: 4 images per setting
    for rec in out["sets"].values():
        assert rec["size"] == 4 and len(rec["adaptation"]) == shift.draws
        for d in rec["adaptation"]:
            assert d["oracle_soup"] >= max(d["kshot_soup"], d["clean_mode"], d["robust_mode"])
            assert d["kshot_w"] in out["weights"]
    written = json.loads(_job(tmp_path, None, COTRAIN, "imagenet-c", shift).out_file.read_text())
    assert written == json.loads(json.dumps(out))


def test_an_interrupted_imagenet_c_job_continues_from_its_partial_file_to_the_uninterrupted_numbers(
        root, tmp_path, monkeypatch):
    shift = _shift(root, imagenet_c__subset=4)
    run_dir = _run_dir(tmp_path / "run", COTRAIN)
    whole = run_real_shift(replace(_job(tmp_path, run_dir, COTRAIN, "imagenet-c", shift),
                                   out_file=tmp_path / "uninterrupted.json"))
    job = _job(tmp_path, run_dir, COTRAIN, "imagenet-c", shift)
    scored, real, preempt = [], real_shift._draws, [True]

    def preempted_at_the_third_setting(correct, loss, weights, key, shift_cfg):
        scored.append(key)
        if preempt[0] and len(scored) == 3:
            raise RuntimeError("preempted")
        return real(correct, loss, weights, key, shift_cfg)

    monkeypatch.setattr(real_shift, "_draws", preempted_at_the_third_setting)
    with pytest.raises(RuntimeError, match="preempted"):
        run_real_shift(job)
    assert not job.out_file.exists()
    partial = json.loads(partial_path(job.out_file).read_text())
    assert list(partial["units"]) == scored[:2] and partial["key"]["checkpoint_sha256"]
    scored.clear()
    preempt[0] = False
    out = run_real_shift(job)
    assert scored == ["imagenet-c/contrast-1", "imagenet-c/contrast-3"]  # the finished settings are not redone
    assert json.loads(job.out_file.read_text()) == json.loads(json.dumps(whole)) == json.loads(json.dumps(out))
    assert not partial_path(job.out_file).exists()


def test_stage_refuses_a_set_left_out_and_a_non_imagenet_model_and_checks_only_its_set(root, tmp_path):
    run_dir = _run_dir(tmp_path / "run", NOMINAL)
    with pytest.raises(RealShiftMissing, match="imagenet-a is not configured"):
        run_real_shift(_job(tmp_path, run_dir, NOMINAL, "imagenet-a", _shift(root, imagenet_a__enabled=False)))
    broken_c = _shift(root, imagenet_c__severities=[5])  # another set's fault is not this job's
    assert "imagenet-sketch" in run_real_shift(_job(tmp_path, run_dir, NOMINAL, "imagenet-sketch", broken_c))["sets"]
    job = _job(tmp_path, run_dir, NOMINAL, "imagenet-sketch", _shift(root))
    with pytest.raises(ValueError, match="model.num_classes is 10"):
        run_real_shift(replace(job, model=replace(MODEL, num_classes=10)))


# ---- the report: the paper's table (mCE, top-1) and accuracy against soup weight --------------

def _record(run, training, adapter, seed, set_name, sets, weights=(0.0, 0.5, 1.0)):
    return {"run": run, "training": training, "adapter": adapter, "family": "vit", "seed": seed,
            "set": set_name, "weights": list(weights), "k": 2, "draws": 2, "classes": 1000, "sets": sets}


def _set(acc, kind="imagenet-r", draws=None, **entry):
    rec = {"kind": kind, **entry, "size": 10, "acc": {f"{w:.2f}": a for w, a in acc.items()}}
    if draws:
        rec["adaptation"] = draws
    return rec


def test_report_computes_mce_against_alexnet_and_top1(tmp_path):
    """Clean-mode errors equal to AlexNet's on all 15 corruptions x 5 severities give an mCE of exactly 100%."""
    def draw(clean=0.6):
        return {"clean_mode": clean, "robust_mode": 0.4, "kshot_soup": 0.7, "kshot_w": 0.5, "oracle_soup": 0.8,
                "oracle_w": 0.5}

    c_sets = {f"imagenet-c/{c}-{s}": _set({0.0: 1 - ALEXNET_ERR[c], 0.5: 0.5, 1.0: 0.4}, "corruption",
                                          [draw(1 - ALEXNET_ERR[c])] * 2, corruption=c, severity=s)
              for c in BENCHMARK_CORRUPTIONS for s in range(1, 6)}
    files = []
    for name, rec in (("c", _record("token-s0", "cotrain", "token", 0, "imagenet-c", c_sets)),
                      ("r", _record("token-s0", "cotrain", "token", 0, "imagenet-r",
                                    {"imagenet-r": _set({0.0: 0.2, 0.5: 0.3, 1.0: 0.1}, draws=[draw(0.2)] * 2)})),
                      ("n", _record("nominal-s0", "nominal", "none", 0, "imagenet-r",
                                    {"imagenet-r": _set({0.0: 0.25})}, weights=[0.0]))):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(rec))
    summary = real_shift_tables(files, tmp_path / "tables", tmp_path / "summary.json", "exp")
    token = summary["variants"]["cotrain/token"]
    assert token["imagenet-c"]["clean_mode"]["mce"]["mean"] == pytest.approx(100.0)
    assert token["imagenet-c"]["robust_mode"]["mce"]["mean"] == pytest.approx(
        100 * np.mean([0.6 / ALEXNET_ERR[c] for c in BENCHMARK_CORRUPTIONS]))
    assert token["imagenet-c"]["kshot_soup"]["mean_corruption_error"]["mean"] == pytest.approx(30.0)
    assert token["imagenet-r"]["oracle_soup"]["top1"]["mean"] == pytest.approx(80.0)
    assert summary["variants"]["nominal"]["imagenet-r"]["clean_mode"]["top1"]["mean"] == pytest.approx(25.0)
    paper = pd.read_csv(tmp_path / "tables" / "shift_real_paper.csv")
    row = paper[(paper["variant"] == "cotrain/token") & (paper["method"] == "clean_mode")].iloc[0]
    assert row["imagenet-c mCE (%, AlexNet = 100)"] == pytest.approx(100.0)
    assert row["imagenet-r top-1 (%)"] == pytest.approx(20.0)
    curve = pd.read_csv(tmp_path / "tables" / "shift_real.csv")
    per_set = curve[(curve["run"] == "token-s0") & curve["setting"].isna()]
    assert len(per_set) == 6 and len(curve[curve["setting"].notna()]) == 75 * 3  # every ImageNet-C setting too
    assert per_set[per_set["set"] == "imagenet-c"].set_index("w")["acc"][0.5] == pytest.approx(0.5)
    png = real_shift_figure(tmp_path / "tables", tmp_path / "figure.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_labels_plain_mce_when_alexnet_normalisation_does_not_apply(tmp_path):
    sets = {"imagenet-c/fog-3": _set({0.0: 0.6}, "corruption", corruption="fog", severity=3)}
    f = tmp_path / "c.json"
    f.write_text(json.dumps(_record("nominal-s0", "nominal", "none", 0, "imagenet-c", sets, weights=[0.0])))
    summary = real_shift_tables([f], tmp_path / "tables", tmp_path / "summary.json", "exp")
    c = summary["variants"]["nominal"]["imagenet-c"]["clean_mode"]
    assert "mce" not in c and c["mean_corruption_error"]["mean"] == pytest.approx(40.0)
    assert "fog x 1 severities" in summary["imagenet_c_normalisation"]


# ---- the synthetic suite on colour images ------------------------------------------------------

@pytest.fixture(scope="module")
def colour_prepared(tmp_path_factory):
    """A prepared colour dataset (N,3,32,32 uint8, 4 classes) in the format of advsoup.data.prepared."""
    out = tmp_path_factory.mktemp("rgb")
    rng = np.random.default_rng(0)
    arrays = {"test_images": rng.integers(0, 256, (12, 3, 32, 32), dtype=np.uint8),
              "test_labels": np.repeat(np.arange(4), 3).astype(np.uint8)}
    files = {}
    for key, arr in arrays.items():
        np.save(out / f"{key}.npy", arr, allow_pickle=False)
        files[f"{key}.npy"] = {"sha256": sha256(out / f"{key}.npy")}
    (out / MANIFEST).write_text(json.dumps({"dataset": "rgb", "classes": list("abcd"), "files": files}))
    return out


COLOUR = dict(subset=8, corruptions=["gaussian_noise", "saturate", "glass_blur"], severities=[1, 4])


def test_colour_suite_is_byte_identical_for_a_seed(colour_prepared, tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        generate_suite(colour_prepared, tmp_path / name, ShiftConfig(**COLOUR, seed=seed))
    files = {name: {p.name: p.read_bytes() for p in sorted((tmp_path / name).iterdir())} for name in "abc"}
    assert files["a"] == files["b"]
    assert files["a"]["gaussian_noise-1_images.npy"] != files["c"]["gaussian_noise-1_images.npy"]
    sets = load_sets(tmp_path / "a")
    assert sets["saturate-4"][1].images.shape == (8, 3, 32, 32)
    sketch = sets["sketch"][1].images
    assert np.array_equal(sketch[:, 0], sketch[:, 1]) and np.array_equal(sketch[:, 0], sketch[:, 2])


@pytest.mark.parametrize("corruption", ["saturate", "gaussian_noise", "frost"])
def test_colour_images_are_corrupted_as_colour_images(corruption):
    """The suite's colour image is imagecorruptions' own output on the RGB image (not three grey channels)."""
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = corrupt_image(image, corruption, 3, seed=5)
    np.random.seed(5)
    ref = np.uint8(np.asarray(corruption_dict[corruption](Image.fromarray(image), 3), dtype=np.float64))
    assert out.shape == (32, 32, 3) and np.array_equal(out, ref)


# The grey suite of the tiny experiment's Fashion-MNIST test split as it was before colour images were
# handled (commit 2778b46): its numbers must not move.
GREY = dict(subset=10, corruptions=["gaussian_noise", "glass_blur", "spatter", "frost", "saturate"], severities=[1, 5])
GREY_SHA256 = {
    "clean": "b88f822bc90851b7", "frost-1": "20f56b4a0f06b5ce", "frost-5": "c6be1b550746e60f",
    "gaussian_noise-1": "52082b5aa4411ed0", "gaussian_noise-5": "3496e033ddaf14e5",
    "glass_blur-1": "420d5e2a050c3e40", "glass_blur-5": "4e0243caa78fbfd2", "saturate-1": "b88f822bc90851b7",
    "saturate-5": "7ef85b717177825a", "sketch": "32b317226891f203", "spatter-1": "5a23308405c3c4ec",
    "spatter-5": "a355ff27c3fe140f"}


def test_grey_fashion_mnist_suite_keeps_its_bytes(prepared, tmp_path):
    manifest = generate_suite(prepared, tmp_path / "grey", ShiftConfig(**GREY))
    got = {name[:-len("_images.npy")]: f["sha256"][:16] for name, f in manifest["files"].items()
           if name.endswith("_images.npy")}
    assert got == GREY_SHA256
