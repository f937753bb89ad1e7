"""Reference outputs of Cellpose 4.2.1.1's CPDINO (DINOv3 backbone) networks with random weights.

Run in a scratch Cellpose 4.2 environment (torch==2.13.0 CPU, cellpose==4.2.1.1, tifffile,
scikit-image) with the source of facebookresearch/dinov3 on the path (it is not on the package index):

    PYTHONPATH=/work/dinov3-src /work/venv-cp42/bin/python tests/tools/make_reference_cpdino.py \
        tiny tests/data/cpdino [--seed 7]
    PYTHONPATH=/work/dinov3-src /work/venv-cp42/bin/python tests/tools/make_reference_cpdino.py \
        vitb /work/cpdino-big/vitb [--seed 7]          # or vitl; hundreds of MB: never committed

What it does: builds cellpose's own ``vit.CPDINO`` (``pretrained=False``), re-draws every weight from
the seed at a trained network's scale (DINOv3's own init has layer-scale 1e-5, which would make the
blocks no-ops and the comparison blind), saves the state dict as ``CellposeModel`` loads it
(``BaseModel.save_model``: ``torch.save(net.state_dict())``, file ``OUT/cpdino_<config>``), then
loads that file with ``CellposeModel(pretrained_model=..., use_bfloat16=False)`` and records:

- ``network_tile_<bsize>.npz`` (bsize 384 and 256): ``net_tile_u8`` (1, 3, b/2, b/2) uint8, the input
  being each value repeated 2 x 2, / 128 - 0.5 (``tile_from_u8``); ``net_out``, the
  network's raw output on it, every 3rd pixel (``[..., ::3, ::3]``);
- per case ``<case>.npz``: ``image``, ``masks`` (full), ``dP`` and ``cellprob`` (every 3rd pixel,
  ``[..., ::3, ::3]``) of ``CellposeModel.eval`` in float32, and ``params`` (eval keywords, JSON text).

``tiny`` is the same CPDINO code around a DINOv3 ViT with width 64, 2 blocks, 4 heads (cellpose's
``dinov3_vitl16`` is pointed at it, and ``get_backbone``, which only knows widths 1024 and 768, is told
it is ``dino_vitl``), small enough for the repository's tests. torchvision does not import with this
torch: it is stubbed (cellpose uses it for training augmentations only).
"""
import argparse
import importlib.machinery
import json
import pathlib
import sys
import types

import numpy as np

# Stored outputs are subsampled (every 3rd pixel of a tile: every token and all 8 x 8 positions within
# one; every 3rd of the flows) so that tests/data/cpdino stays under 2 MB: random weights do not compress.
STRIDE_TILE, STRIDE_FLOWS = 3, 3


def tile_from_u8(small):
    """The network tile stored as ``small``: each uint8 value repeated 2 x 2, then / 128 - 0.5 (exact)."""
    return np.repeat(np.repeat(small, 2, axis=-2), 2, axis=-1).astype(np.float32) / 128 - 0.5


def stub_torchvision():
    def unavailable(*args, **kwargs):
        raise RuntimeError("torchvision is not available")
    names = ["torchvision", "torchvision.transforms", "torchvision.transforms.functional",
             "torchvision.transforms._functional_tensor", "torchvision.ops", "torchvision.ops.boxes"]
    for name in names:
        module = types.ModuleType(name)
        module.__getattr__ = lambda attr: (_ for _ in ()).throw(AttributeError(attr)) if attr.startswith("__") \
            else unavailable
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        sys.modules[name] = module
    for name in names[1:]:
        parent, _, child = name.rpartition(".")
        setattr(sys.modules[parent], child, sys.modules[name])


def tiny_dinov3(**kwargs):
    """A DINOv3 ViT built like ``dinov3_vitl16`` (same options) but 64 wide, 2 blocks deep, 4 heads."""
    from dinov3.models.vision_transformer import DinoVisionTransformer
    model = DinoVisionTransformer(img_size=224, patch_size=16, in_chans=3, pos_embed_rope_base=100,
                                  pos_embed_rope_normalize_coords="separate", pos_embed_rope_rescale_coords=2,
                                  pos_embed_rope_dtype="fp32", embed_dim=64, depth=2, num_heads=4, ffn_ratio=4,
                                  qkv_bias=True, drop_path_rate=0.0, layerscale_init=1.0e-05,
                                  norm_layer="layernormbf16", ffn_layer="mlp", ffn_bias=True, proj_bias=True,
                                  n_storage_tokens=4, mask_k_bias=True)
    model.init_weights()
    return model


def randomise(net, seed):
    """Every learned weight re-drawn from ``seed`` at a trained network's scale (W2, rope periods and
    the k-bias mask, which are fixed, are kept)."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.state_dict().items():
            if name == "W2" or name.endswith(("periods", "bias_mask")) or name.startswith("diam"):
                continue
            shape = p.shape
            if name.endswith(("ls1.gamma", "ls2.gamma")):
                new = 0.2 + 0.3 * torch.rand(shape, generator=gen)
            elif name.endswith(("cls_token", "storage_tokens")):
                new = torch.randn(shape, generator=gen)
            elif name.endswith("mask_token"):
                new = torch.zeros(shape)
            elif p.ndim == 1 and ("norm" in name):
                new = (1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(shape, generator=gen)
            elif p.ndim == 1:
                new = 0.05 * torch.randn(shape, generator=gen)
            else:
                fan_in = int(np.prod(shape[1:]))
                new = (torch.rand(shape, generator=gen) * 2 - 1) * fan_in ** -0.5
                if name == "out.weight":
                    new = new * 6.0  # flows and cell probability of a few units, as a trained net's
            if name == "out.bias":
                new[2 * 64:] += 2.0  # cell probability mostly above 0, so that eval makes some masks
            p.copy_(new.to(p.dtype))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config", choices=["tiny", "vitb", "vitl"])
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-eval", action="store_true", help="network tiles only (full-size nets are slow)")
    args = ap.parse_args()
    stub_torchvision()
    import torch
    torch.set_num_threads(2)
    import cellpose.vit as cv
    from cellpose import models
    if args.config == "tiny":
        cv.dinov3_vitl16 = lambda pretrained=False: tiny_dinov3()
        models.get_backbone = lambda path: "dino_vitl"
    torch.manual_seed(args.seed)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    net = cv.CPDINO(model_name="vitb" if args.config == "vitb" else "vitl", dtype=torch.float32)
    randomise(net, args.seed)
    weights = out / f"cpdino_{args.config}"
    net.save_model(str(weights))

    model = models.CellposeModel(gpu=False, pretrained_model=str(weights), use_bfloat16=False)
    model.net.eval()  # as core._forward does: in training mode CPDINO drops blocks and jitters the rope at random
    rng = np.random.default_rng(args.seed + 1000)
    for bsize in (384, 256):
        # stored small (net_tile_u8, half the side, 8 bits): the input is tile_from_u8(net_tile_u8)
        tile_u8 = rng.integers(0, 256, (1, 3, bsize // 2, bsize // 2)).astype(np.uint8)
        tile = torch.from_numpy(tile_from_u8(tile_u8))
        with torch.no_grad():
            net_out = model.net(tile)[0].numpy()
        np.savez_compressed(out / f"network_tile_{bsize}.npz", net_tile_u8=tile_u8,
                            net_out=net_out[..., ::STRIDE_TILE, ::STRIDE_TILE])
        print("tile", bsize, "out range", float(net_out.min()), float(net_out.max()), flush=True)
    if args.no_eval:
        return

    def blobs(shape, n, diam, dtype=np.uint16):
        yy, xx = np.mgrid[:shape[0], :shape[1]]
        img = np.zeros(shape, np.float32)
        for cy, cx in zip(rng.uniform(0, shape[0], n), rng.uniform(0, shape[1], n)):
            img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (diam / 3) ** 2))
        scale = 1000 if dtype == np.uint16 else 200
        return (img * scale + rng.normal(scale / 10, scale / 100, shape)).clip(0, np.iinfo(dtype).max).astype(dtype)

    def run(case, img, **kw):
        masks, flows, _ = model.eval(img, **kw)
        np.savez_compressed(out / f"{case}.npz", image=img, masks=masks.astype(np.int32),
                            dP=np.asarray(flows[1], np.float32)[:, ::STRIDE_FLOWS, ::STRIDE_FLOWS],
                            cellprob=np.asarray(flows[2], np.float32)[::STRIDE_FLOWS, ::STRIDE_FLOWS],
                            params=json.dumps(dict(eval=kw, cellpose="4.2.1.1", torch=torch.__version__,
                                                   use_bfloat16=False, config=args.config, seed=args.seed)))
        print(case, img.shape, "masks", int(masks.max()), flush=True)

    run("gray_150x200_default", blobs((150, 200), 12, 24.0))
    img = blobs((300, 260), 30, 26.0)
    run("gray_300x260_b256", img, bsize=256)
    run("gray_300x260_b384", img, bsize=384)
    rgb = np.stack([blobs((200, 430), 25, 28.0, np.uint8), blobs((200, 430), 25, 28.0, np.uint8),
                    np.zeros((200, 430), np.uint8)], -1)
    run("gray_420x200_b384_flow0", blobs((420, 200), 30, 26.0), bsize=384, flow_threshold=0.0)
    run("rgb_200x430_b256_diam40", rgb, channel_axis=-1, bsize=256, diameter=40.0)


if __name__ == "__main__":
    main()
