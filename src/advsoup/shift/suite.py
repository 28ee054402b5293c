"""The distribution-shift suite of the embedded dataset, written once like the prepared data.

The small-scale analogues of the paper's shifted ImageNet test sets, made from a
fixed class-balanced subset of the test split:

* ``<corruption>-<severity>``: every ImageNet-C corruption (imagecorruptions-imaug,
  offline) at the configured severities (the analogue of ImageNet-C); colour
  images (CIFAR-10) are corrupted as colour images, which makes a
  CIFAR-10-C-like suite, and grey ones (Fashion-MNIST) as grey;
* ``sketch``: a rendition as dark pencil strokes on white paper (Sobel edge
  map, inverted): texture, fill and background polarity are gone, the shape
  stays (the analogue of ImageNet-Sketch / -R);
* ``clean``: the same images unchanged, the reference every drop is read against.

The hard subset (the analogue of ImageNet-A) needs a trained reference model
and is written by the DAG after it trained (advsoup.shift.build_hard_subset),
in the same format.

Every set is a "split" of the prepared format (``<set>_images.npy`` uint8
N,C,H,W + ``<set>_labels.npy`` + a manifest with sha256), so
``advsoup.data.prepared.load_split(suite_dir, name)`` loads and verifies it.
Each image is corrupted under its own seed derived from (shift.seed,
corruption, severity, image), so the suite does not depend on the order of
work.
"""
from __future__ import annotations

import inspect
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
from PIL import Image

from ..atomic import atomic_dir, write_json
from ..config import CORRUPTIONS, ShiftConfig
from ..logs import progress, setup_logging
from ..data.prepared import MANIFEST, balanced_subset, load_split, sha256
from .names import CLEAN, HARD, SKETCH

MIN_SIDE = 32  # imagecorruptions refuses smaller images


def corruption_set(corruption: str, severity: int) -> str:
    return f"{corruption}-{severity}"


def _seed(seed: int, corruption: str, severity: int, index: int) -> int:
    state = np.random.SeedSequence([seed, CORRUPTIONS.index(corruption), severity, index]).generate_state(1)
    return int(state[0])


def corrupt_image(image: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """One image through an ImageNet-C corruption, same shape and dtype out.

    A colour H x W x 3 uint8 image is corrupted as the colour image it is (as
    ImageNet-C was made). A grey H x W image goes through as RGB with three
    equal channels and comes back by luminance (PIL's "L", exact for grey
    inputs): per-channel noises are thereby averaged, i.e. somewhat weaker
    than on a colour image. Images under 32 px are zero-padded (the black
    background of Fashion-MNIST) and cropped back.

    The corruption function is called directly rather than through
    ``imagecorruptions.corrupt``, whose uint8 cast hides NaNs: on 32 px images
    spatter at severity 1 sometimes draws no liquid at all and divides 0 by 0
    (about 2.5% of the images); those pixels keep their value, as without liquid.
    """
    from imagecorruptions import corruption_dict

    grey = image.ndim == 2
    if not (grey or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"corrupt_image takes a grey H x W or a colour H x W x 3 image, not shape {image.shape}")
    h, w = image.shape[:2]
    ph, pw = max(0, MIN_SIDE - h), max(0, MIN_SIDE - w)
    pads = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
    padded = np.pad(image, pads + ((0, 0),) * (image.ndim - 2))
    rgb_in = np.repeat(padded[..., None], 3, axis=2) if grey else padded
    fn = corruption_dict[corruption]
    np.random.seed(seed)  # most corruptions draw from numpy's global generator
    kwargs = {"seed": seed} if "seed" in inspect.signature(fn).parameters else {}
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.asarray(fn(Image.fromarray(rgb_in), severity, **kwargs), dtype=np.float64)
    out = np.where(np.isnan(out), rgb_in, out)
    rgb = np.uint8(out)  # truncation, as imagecorruptions.corrupt (and ImageNet-C) does
    if grey:
        rgb = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).convert("L"))
    return rgb[pads[0][0]:pads[0][0] + h, pads[1][0]:pads[1][0] + w]


def sketch_image(image: np.ndarray) -> np.ndarray:
    """Dark strokes where the image has edges, white elsewhere; same shape out.

    A colour image is drawn from its luminance and comes back grey in three
    channels, as ImageNet-Sketch's drawings are stored.
    """
    from skimage.filters import sobel

    if image.ndim == 3:
        lum = np.asarray(Image.fromarray(np.ascontiguousarray(image)).convert("L"))
        return np.repeat(sketch_image(lum)[..., None], 3, axis=2)
    edges = sobel(image.astype(np.float64) / 255.0)
    edges /= max(float(edges.max()), 1e-8)  # the strongest edge of every image is black
    return np.round(255.0 * (1.0 - edges)).astype(np.uint8)


def _map_images(images: np.ndarray, fn: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
    """Apply fn(image, index) to every image of N,C,H,W uint8: grey (C=1) as H x W, colour (C=3) as H x W x 3."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"the shift suite takes N,C,H,W images with C=1 (grey) or C=3 (RGB), not shape "
                         f"{images.shape}; check the prepared data's test_images.npy")
    out = np.empty_like(images)
    for i in range(len(images)):
        if images.shape[1] == 1:
            out[i, 0] = fn(images[i, 0], i)
        else:
            out[i] = fn(np.ascontiguousarray(images[i].transpose(1, 2, 0)), i).transpose(2, 0, 1)
    return out


def suite_sets(shift: ShiftConfig) -> List[Dict[str, Any]]:
    """The sets the suite holds, in order, with what each is (kind, corruption, severity)."""
    sets: List[Dict[str, Any]] = [{"name": CLEAN, "kind": CLEAN}]
    sets += [{"name": corruption_set(c, s), "kind": "corruption", "corruption": c, "severity": s}
             for c in shift.corruptions for s in shift.severities]
    if shift.sketch:
        sets.append({"name": SKETCH, "kind": SKETCH})
    return sets


def write_sets(out_dir: Path, sets: Dict[str, tuple], info: Dict[str, Any]) -> Dict[str, Any]:
    """Write {name: (images, labels, entry)} atomically as prepared-format splits plus a manifest."""
    manifest = {**info, "files": {}, "sets": {}}
    with atomic_dir(out_dir) as tmp:
        for name, (images, labels, entry) in sets.items():
            for key, arr in ((f"{name}_images", images), (f"{name}_labels", labels)):
                np.save(tmp / f"{key}.npy", arr, allow_pickle=False)
                manifest["files"][f"{key}.npy"] = {"sha256": sha256(tmp / f"{key}.npy"),
                                                   "shape": list(arr.shape), "dtype": str(arr.dtype)}
            manifest["sets"][name] = {**entry, "size": int(len(labels))}
        write_json(tmp / MANIFEST, manifest)
    return manifest


def generate_suite(prepared: Path, out_dir: Path, shift: ShiftConfig, log=None) -> Dict[str, Any]:
    """Write the corruption, sketch and clean sets of ``shift.subset`` test images to out_dir."""
    test = load_split(prepared, "test")
    idx = balanced_subset(test.labels, shift.subset, seed=shift.seed) if shift.subset else np.arange(len(test))
    images, labels = test.images[idx], test.labels[idx].astype(np.uint8)
    out: Dict[str, tuple] = {}
    sets = suite_sets(shift)
    for entry in progress(sets, desc="shift suite", total=len(sets)):
        name = entry.pop("name")
        if entry["kind"] == CLEAN:
            shifted = images
        elif entry["kind"] == SKETCH:
            shifted = _map_images(images, lambda im, i: sketch_image(im))
        else:
            c, s = entry["corruption"], entry["severity"]
            shifted = _map_images(images, lambda im, i: corrupt_image(im, c, s, _seed(shift.seed, c, s, int(idx[i]))))
        out[name] = (shifted, labels, entry)
        if log:
            log.info("shift set %s: %d images", name, len(labels))
    info = {"dataset": json.loads((prepared / MANIFEST).read_text())["dataset"], "classes": list(test.classes),
            "seed": shift.seed, "test_indices": idx.tolist()}
    return write_sets(out_dir, out, info)


@dataclass
class SuiteJob:
    prepared: Path
    out_dir: Path
    shift: ShiftConfig


def run_suite(job: SuiteJob) -> Dict[str, Any]:
    """The suite as a launcher job: logs what it wrote and how long it took."""
    log = setup_logging()
    start = time.time()
    manifest = generate_suite(job.prepared, job.out_dir, job.shift, log)
    log.info("shift suite: %d sets of %d images in %s, generated in %.1f s", len(manifest["sets"]),
             len(manifest["test_indices"]), job.out_dir, time.time() - start)
    return manifest


def read_manifest(suite_dir: Path) -> Dict[str, Any]:
    path = suite_dir / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no shift set at '{suite_dir}' (missing {MANIFEST}); run "
                                f"`advsoup shift-suite --config <experiment>` (or the DAG) first")
    return json.loads(path.read_text())


def load_sets(suite_dir: Path, names: Optional[List[str]] = None) -> Dict[str, tuple]:
    """{name: (entry, Split)} of the sets in suite_dir (every set, or those named), hashes verified."""
    manifest = read_manifest(suite_dir)
    unknown = sorted(set(names or []) - set(manifest["sets"]))
    if unknown:
        raise ValueError(f"{suite_dir} has no shift set {unknown}; it holds {sorted(manifest['sets'])}")
    return {name: (entry, load_split(suite_dir, name))
            for name, entry in manifest["sets"].items() if names is None or name in names}
