"""Pre-alignment of an image pair by SIFT features and a RANSAC homography (kornia).

The variational osmosis paper registers its cultural-heritage pairs (visible / infrared) this way before fusing
them. Everything runs on the inputs' device; SIFT needs no learned weights.
"""

from __future__ import annotations

import torch

from fusion.ops.checks import check_image


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    if x.shape[1] == 3:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)
    return x.mean(1, keepdim=True)


def estimate_homography(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    *,
    num_features: int = 2000,
    match_threshold: float = 0.9,
    inlier_threshold: float = 2.0,
    ransac_iter: int = 200,
    seed: int | None = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Homographies ``H`` mapping pixel coordinates ``(x, y)`` of ``moving`` onto those of ``fixed``.

    SIFT keypoints and descriptors on the grey images (``kornia.feature.SIFTFeature``), mutual nearest
    neighbours that pass the ratio test (``match_smnn``), then a RANSAC homography (``kornia.geometry.ransac``).

    Args:
        moving, fixed: ``(B, C, H, W)`` images in [0, 1] (sizes may differ).
        num_features: SIFT keypoints per image.
        match_threshold: second-nearest-neighbour ratio threshold.
        inlier_threshold: RANSAC inlier threshold in pixels.
        ransac_iter: RANSAC iterations.
        seed: RANSAC random seed (``None``: not seeded).

    Returns:
        ``(H, inliers)``: ``(B, 3, 3)`` homographies (float32 computations cast to the input dtype) and the
        ``(B,)`` number of inlier matches.

    Raises:
        ValueError: fewer than 4 matches in a sample (no homography can be fitted).
    """
    from kornia.feature import SIFTFeature, get_laf_center, match_smnn
    from kornia.geometry.ransac import RANSAC

    check_image(moving, "moving")
    check_image(fixed, "fixed")
    if moving.shape[0] != fixed.shape[0]:
        raise ValueError(f"moving and fixed batch sizes differ: {moving.shape[0]} vs {fixed.shape[0]}")
    sift = SIFTFeature(num_features=num_features, upright=False, device=moving.device)
    hs, counts = [], []
    for i in range(moving.shape[0]):
        with torch.no_grad():
            laf_m, _, desc_m = sift(_gray(moving[i : i + 1]).float())
            laf_f, _, desc_f = sift(_gray(fixed[i : i + 1]).float())
            _, idx = match_smnn(desc_m[0], desc_f[0], match_threshold)
            if idx.shape[0] < 4:
                raise ValueError(f"only {idx.shape[0]} SIFT matches in sample {i}; need at least 4 for a homography")
            pts_m = get_laf_center(laf_m)[0][idx[:, 0]]
            pts_f = get_laf_center(laf_f)[0][idx[:, 1]]
            ransac = RANSAC("homography", inl_th=inlier_threshold, max_iter=ransac_iter, seed=seed)
            h, inl = ransac(pts_m, pts_f)
        hs.append(h.to(moving.dtype))
        counts.append(int(inl.sum()))
    return torch.stack(hs), torch.tensor(counts, device=moving.device)


def align_to(moving: torch.Tensor, fixed: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp ``moving`` onto the pixel grid of ``fixed`` with the homography of :func:`estimate_homography`.

    Args:
        moving: ``(B, C, H', W')`` image to register (e.g. the infrared background ``b``).
        fixed: ``(B, C, H, W)`` reference (e.g. the foreground ``f``).
        **kwargs: passed to :func:`estimate_homography`.

    Returns:
        ``(aligned, H)``: ``(B, C, H, W)`` warped image (bilinear; pixels that come from outside ``moving`` take
        the nearest border value) and the ``(B, 3, 3)`` homographies.
    """
    from kornia.geometry.transform import warp_perspective

    h, _ = estimate_homography(moving, fixed, **kwargs)
    out = warp_perspective(moving, h, dsize=tuple(fixed.shape[-2:]), padding_mode="border", align_corners=True)
    return out, h


__all__ = ["align_to", "estimate_homography"]
