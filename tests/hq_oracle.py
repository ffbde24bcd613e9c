"""HQ-SAM parity helpers shared by the per-size test files: the official ``segment_anything_hq``
model (test-only oracle) and ours with the same seeded random weights, one photo encoded once by
each, and the comparisons every size runs.

Tolerances: relative to the reference output's max magnitude, 1e-4 (float32) for the image
embedding, the early-layer (interm) feature, the low-res mask logits and the upscaled masks;
absolute 1e-4 for predicted IoU.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from sam_model import SAM_HQ_CONFIGS, SamHQ
from sam_model.point_decoder import RejectWindow

from .conftest import read_photo

OFFICIAL_NAME = {"sam_hq_vit_b": "vit_b", "sam_hq_vit_l": "vit_l", "sam_hq_vit_h": "vit_h",
                 "sam_hq_vit_tiny": "vit_tiny"}
TOL = 1e-4


def oracle():
    """The ``segment_anything_hq`` package, or skip (it is in the test extra, with timm)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip("segment_anything_hq",
                                   reason="the HQ-SAM parity oracle needs the test extra")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return ((a - b).abs().max() / b.abs().max()).item()


def randomise_(module: torch.nn.Module, seed: int) -> None:
    """Fill every floating parameter and buffer with seeded noise: 0.05 * N(0, 1), norm
    weights 1 + 0.1 * N(0, 1), BatchNorm variances 1 + 0.1 * |N(0, 1)| (the official init
    leaves position embeddings, rel-pos tables and attention biases at zero, which would make
    their parity trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.dtype.is_floating_point:
                continue
            noise = torch.randn(t.shape, generator=g)
            if "running_var" in name:
                t.copy_(1.0 + 0.1 * noise.abs())
            elif t.ndim == 1 and name.endswith(".weight"):
                t.copy_(1.0 + 0.1 * noise)
            else:
                t.copy_(0.05 * noise)


@dataclass
class EncodedPair:
    """Ours and the official model with the same weights, one photo encoded by each."""

    ours: SamHQ
    emb: object  # HQImageEmbedding
    predictor: object  # segment_anything_hq.SamPredictor with the image set
    image: np.ndarray


def random_pair(name: str, seed: int = 0) -> tuple[SamHQ, torch.nn.Module]:
    """(ours, official) ``name`` models with the same seeded random weights (``randomise_`` of
    the official model, loaded into ours strictly), both in eval mode."""
    sa = oracle()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = sa.sam_model_registry[OFFICIAL_NAME[name]]()
    randomise_(ref, seed)
    ref.eval()  # TinyViT caches its attention biases when switched to eval mode
    ours = SamHQ(SAM_HQ_CONFIGS[name])
    ours.load_state_dict(ref.state_dict(), strict=True)  # key-for-key compatible
    return ours.eval(), ref


def encoded_pair(name: str, photo: str, seed: int = 0) -> EncodedPair:
    """:func:`random_pair`, and ``photo`` encoded by both."""
    sa = oracle()
    ours, ref = random_pair(name, seed)
    image = read_photo(photo)
    predictor = sa.SamPredictor(ref)
    with torch.no_grad():
        predictor.set_image(image)
    return EncodedPair(ours, ours.encode_image(image), predictor, image)


def reference_predict(pair: EncodedPair, points_xy: np.ndarray, labels: np.ndarray,
                      boxes: np.ndarray | None = None, multimask: bool = True,
                      hq_token_only: bool = False):
    """Official ``predict_torch`` (logits) on prompts in original-image pixels."""
    p = pair.predictor
    pts = torch.as_tensor(p.transform.apply_coords(points_xy, pair.image.shape[:2]))
    bx = None if boxes is None else torch.as_tensor(p.transform.apply_boxes(boxes, pair.image.shape[:2]))
    with torch.no_grad():
        return p.predict_torch(pts, torch.as_tensor(labels), boxes=bx, multimask_output=multimask,
                               return_logits=True, hq_token_only=hq_token_only)


def random_points(image: np.ndarray, n: int, seed: int) -> np.ndarray:
    """(n, 1, 2) float64 xy uniform over the image."""
    rng = np.random.default_rng(seed)
    return rng.uniform([0, 0], [image.shape[1], image.shape[0]], size=(n, 1, 2))


def check_encoder(pair: EncodedPair) -> dict[str, float]:
    """Image embedding and early-layer feature against the official encoder."""
    emb, p = pair.emb, pair.predictor
    ref_interm = p.interm_features[0].permute(0, 3, 1, 2)  # official: (1, h, w, C)
    assert emb.embedding.shape == p.features.shape == (1, 256, 64, 64)
    assert emb.interm_embedding.shape == ref_interm.shape
    assert emb.interm_embedding.shape[1] == SAM_HQ_CONFIGS[pair.ours.cfg.name].interm_dim
    errs = {"embedding": rel_err(emb.embedding, p.features),
            "interm": rel_err(emb.interm_embedding, ref_interm)}
    assert errs["embedding"] < TOL and errs["interm"] < TOL, errs
    return errs


def check_decoder(pair: EncodedPair, multimask: bool, hq_token_only: bool,
                  n_points: int = 12) -> dict[str, float]:
    """One-point prompts: low-res logits, IoU and upscaled masks against the official
    predictor; one output per prompt."""
    pts = random_points(pair.image, n_points, seed=1)
    labels = np.ones((n_points, 1), np.int64)
    masks, iou, low = reference_predict(pair, pts, labels, multimask=multimask,
                                        hq_token_only=hq_token_only)
    low2, iou2 = pair.ours.decode(pair.emb, torch.as_tensor(pts), torch.as_tensor(labels),
                                  multimask_output=multimask, hq_token_only=hq_token_only)
    assert low2.shape == low.shape == (n_points, 1, 256, 256)
    assert iou2.shape == iou.shape == (n_points, 1)
    errs = {"low_res": rel_err(low2, low), "iou": (iou2 - iou).abs().max().item(),
            "masks": rel_err(pair.ours.upscale_masks(low2, pair.emb), masks)}
    assert errs["low_res"] < TOL and errs["iou"] < TOL and errs["masks"] < TOL, errs
    return errs


def check_mixed_prompts(pair: EncodedPair) -> None:
    """Two-point prompts (foreground + background) and boxes, single and multimask."""
    h, w = pair.image.shape[:2]
    pts = random_points(pair.image, 6, seed=2).reshape(3, 2, 2)
    labels = np.array([[1, 0]] * 3)
    boxes = np.array([[0.1 * w, 0.2 * h, 0.6 * w, 0.9 * h], [0.4 * w, 0.1 * h, 0.9 * w, 0.5 * h],
                      [0.0, 0.0, w - 1.0, h - 1.0]])
    for multimask in (True, False):
        _, iou, low = reference_predict(pair, pts, labels, boxes=boxes, multimask=multimask)
        low2, iou2 = pair.ours.decode(pair.emb, torch.as_tensor(pts), torch.as_tensor(labels),
                                      boxes_xyxy=torch.as_tensor(boxes), multimask_output=multimask)
        assert rel_err(low2, low) < TOL
        assert (iou2 - iou).abs().max().item() < TOL


def split_between(values: torch.Tensor) -> float:
    """A threshold between two of ``values`` near their middle, at the widest gap among the
    middle half, so that float rounding far below the gap cannot move a value across it."""
    v = values.double().sort().values
    n = len(v)
    lo, hi = n // 4, max(n // 4 + 1, (3 * n) // 4)
    gaps = v[lo + 1:hi + 1] - v[lo:hi]
    i = lo + int(gaps.argmax())
    gap = float(v[i + 1] - v[i])
    assert gap > 1e-5 * max(1.0, float(v.abs().max())), f"values too close to split: {v.tolist()}"
    return float((v[i] + v[i + 1]) / 2)


def check_point_decoder(pair: EncodedPair, n_points: int = 16) -> int:
    """The seam's plain point decoder against the official generator's batch step
    (``predict_torch`` multimask, not HQ-only, flattened, IoU > threshold), with a reject
    window and a ``low_res_hw`` crop. Returns how many outputs survived."""
    pts = random_points(pair.image, n_points, seed=3)[:, 0]
    _, iou, low = reference_predict(pair, pts[:, None], np.ones((n_points, 1), np.int64))
    iou, low = iou.flatten(), low.flatten(0, 1)
    thresh = split_between(iou)  # about half survive
    y0, y1, x0, x1 = 10, 20, 30, 44
    window = low[:, 4 * y0:4 * y1, 4 * x0:4 * x1]
    cut = split_between(window.amax((1, 2)))

    def reject(win: torch.Tensor) -> torch.Tensor:
        return win.amax((1, 2)) > cut

    keep = (iou > thresh) & ~(window.amax((1, 2)) > cut)
    dec = pair.ours.point_decoder(pair.emb, low_res_hw=(200, 240))
    out = dec.decode(pts, thresh, reject=[RejectWindow((y0, y1, x0, x1), reject)])
    expected_index = torch.nonzero(keep).flatten()
    assert 0 < len(expected_index) < n_points
    assert torch.equal(out.prompt_index, expected_index)
    assert out.prompt_index.dtype == torch.int64
    assert out.low_res_logits.shape == (len(expected_index), 200, 240)
    assert out.low_res_logits.dtype == out.predicted_iou.dtype == torch.float32
    assert rel_err(out.low_res_logits, low[keep][:, :200, :240]) < TOL
    assert (out.predicted_iou - iou[keep]).abs().max().item() < TOL
    everything = pair.ours.point_decoder(pair.emb).decode(pts, 0.0)
    assert torch.equal(everything.prompt_index, torch.arange(n_points))
    assert everything.low_res_logits.shape == (n_points, 256, 256)
    return len(expected_index)


def check_low_res_to_image(pair: EncodedPair) -> float:
    """``ay @ low_res @ ax.T`` equals the official ``postprocess_masks``."""
    pts = random_points(pair.image, 3, seed=4)
    masks, _, low = reference_predict(pair, pts, np.ones((3, 1), np.int64))
    ay, ax = pair.ours.low_res_to_image(pair.emb)
    h, w = pair.image.shape[:2]
    assert ay.shape == (h, 256) and ax.shape == (w, 256) and ay.dtype == np.float64
    image_logits = torch.from_numpy(ay) @ low[:, 0].double() @ torch.from_numpy(ax).T
    err = rel_err(image_logits, masks[:, 0].double())
    assert err < TOL
    return err


def shape_for_grids_(models: tuple[torch.nn.Module, ...], seed: int = 5,
                     attention_gain: float = 3.0, mask_logit_gain: float = 25.0) -> None:
    """Make random-weight masks usable by a grid generator, in ours and the official model
    alike (``models``: both, with the same weights; encoder outputs are unchanged): the prompt
    encoder's Fourier-feature matrix seeded N(0, 1) (its official init; at ``randomise_``'s
    0.05 scale every point gets nearly the same encoding, so every prompt the same mask), the
    mask decoder's attention query/key projections times ``attention_gain``, and the output
    layers of the SAM and HQ hypernetworks times ``mask_logit_gain`` (logits well beyond the
    stability score's +-1)."""
    gauss = models[0].prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    noise = torch.randn(gauss.shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for model in models:
            model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.copy_(noise)
            for name, p in model.mask_decoder.named_parameters():
                if (".q_proj." in name or ".k_proj." in name) and name.endswith("weight"):
                    p.mul_(attention_gain)
                if name.startswith(("output_hypernetworks_mlps.", "hf_mlp.")) and ".layers.2." in name:
                    p.mul_(mask_logit_gain)
