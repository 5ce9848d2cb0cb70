"""What defines a Vim model: the variants, and how to read one off a state dict's shapes."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, replace

from ..errors import CheckpointError

__all__ = ["VimConfig", "VARIANTS", "config_from_state_dict", "parse_img_size", "format_img_size", "DYNAMIC"]


@dataclass(frozen=True)
class VimConfig:
    """Hyper-parameters of the official bimamba-v2, middle-class-token, div2 Vim models."""

    embed_dim: int = 192
    depth: int = 24
    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    dt_rank: int | None = None  # None: ceil(embed_dim / 16), as mamba_ssm's "auto"
    patch_size: int = 16
    stride: int = 16
    img_size: int = 224  # the resolution the position embedding was trained for
    in_chans: int = 3
    num_classes: int = 1000
    norm_eps: float = 1e-5
    out_scale: float = 0.5  # if_divide_out=True: out_proj((y_f + y_b) / 2)

    def __post_init__(self):
        if self.dt_rank is None:
            object.__setattr__(self, "dt_rank", math.ceil(self.embed_dim / 16))

    @property
    def d_inner(self) -> int:
        return self.expand * self.embed_dim

    def grid(self, img_size: int | None = None) -> int:
        """Patches along a side of `img_size` pixels (default: the trained resolution)."""
        img = self.img_size if img_size is None else img_size
        return (img - self.patch_size) // self.stride + 1

    def tokens(self, img_size: int | None = None) -> int:
        """Sequence length the scans see: patches plus the class token."""
        return self.grid(img_size) ** 2 + 1

    @property
    def variant(self) -> str:
        name = {192: "tiny", 384: "small", 768: "base"}.get(self.embed_dim, f"d{self.embed_dim}")
        if self.depth != 24:
            name += f"-depth{self.depth}"
        name += f"-p{self.patch_size}"
        if self.stride != self.patch_size:
            name += f"-s{self.stride}"
        return name

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **changes) -> "VimConfig":
        return replace(self, **changes)


VARIANTS: dict[str, VimConfig] = {
    "tiny": VimConfig(embed_dim=192),
    "small": VimConfig(embed_dim=384),
    "base": VimConfig(embed_dim=768),
    "tiny-s8": VimConfig(embed_dim=192, stride=8),
    "small-s8": VimConfig(embed_dim=384, stride=8),
    "base-s8": VimConfig(embed_dim=768, stride=8),
}

DYNAMIC = "dynamic"  # an export that takes any resolution on the patch grid


def parse_img_size(value) -> tuple[int, int] | str | None:
    """An input size as users write it: None -> None (the model's own); 224 or "224" ->
    (224, 224); "224x320" -> (224, 320), height x width; "dynamic" -> DYNAMIC."""
    if value is None or value == "":
        return None
    if isinstance(value, (tuple, list)) and len(value) == 2:
        h, w = value
    elif isinstance(value, int):
        h = w = value
    else:
        text = str(value).strip().lower()
        if text == DYNAMIC:
            return DYNAMIC
        parts = text.split("x")
        try:
            h, w = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
        except ValueError:
            h = w = None
        if len(parts) > 2:
            h = None
    if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
        from ..errors import InputError

        raise InputError(f"an image size is N, HxW (e.g. 224x320) or 'dynamic'; got {value!r}.")
    return int(h), int(w)


def format_img_size(size) -> str:
    """(224, 224) -> "224"; (224, 320) -> "224x320"; DYNAMIC -> "dynamic"."""
    if size == DYNAMIC:
        return DYNAMIC
    h, w = size
    return str(h) if h == w else f"{h}x{w}"


_LAYER_KEY = re.compile(r"^layers\.(\d+)\.")


def _infer_stride_and_img(grid: int, patch: int) -> tuple[int, int]:
    """Pick the (stride, img_size) that explains a square patch grid.

    Official models use stride = patch (16) or stride = patch / 2 (the long-sequence
    fine-tuned "stride8" models). Both explain any grid, at different resolutions;
    training resolutions are multiples of 32 (224, 384, 448, ...), so take the one that is,
    preferring stride = patch.
    """
    for stride in (patch, patch // 2):
        img = (grid - 1) * stride + patch
        if img % 32 == 0:
            return stride, img
    return patch, grid * patch


def config_from_state_dict(sd: dict, **overrides) -> VimConfig:
    """Infer the architecture from the tensor shapes of an official Vim state dict.

    `overrides` (stride, img_size, ...) win over what is inferred; they are how users
    resolve the one ambiguity shapes cannot: stride 16 vs 8 for an unusual grid.
    """
    required = ["patch_embed.proj.weight", "pos_embed", "cls_token", "head.weight", "norm_f.weight",
                "layers.0.mixer.A_log", "layers.0.mixer.in_proj.weight", "layers.0.mixer.conv1d.weight",
                "layers.0.mixer.dt_proj.weight"]
    missing = [k for k in required if k not in sd]
    if missing:
        raise CheckpointError(
            "this does not look like a Vim state dict: missing " + ", ".join(missing)
            + f" (it has {len(sd)} tensors, e.g. {', '.join(list(sd)[:5]) or 'none'})."
        )
    embed_dim, in_chans, patch, patch_w = sd["patch_embed.proj.weight"].shape
    if patch != patch_w:
        raise CheckpointError(f"non-square patches ({patch}x{patch_w}) are not a Vim model.")
    depth = 1 + max(int(m.group(1)) for k in sd if (m := _LAYER_KEY.match(k)))
    d_inner, d_state = sd["layers.0.mixer.A_log"].shape
    num_patches = sd["pos_embed"].shape[1] - 1
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise CheckpointError(f"pos_embed has {num_patches} patch positions, not a square grid.")
    stride, img_size = _infer_stride_and_img(grid, patch)
    inferred = dict(
        embed_dim=embed_dim,
        depth=depth,
        d_state=d_state,
        expand=d_inner // embed_dim,
        d_conv=sd["layers.0.mixer.conv1d.weight"].shape[-1],
        dt_rank=sd["layers.0.mixer.dt_proj.weight"].shape[1],
        patch_size=patch,
        stride=stride,
        img_size=img_size,
        in_chans=in_chans,
        num_classes=sd["head.weight"].shape[0],
    )
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "stride" in overrides and "img_size" not in overrides:
        inferred["img_size"] = (grid - 1) * overrides["stride"] + patch
    elif "img_size" in overrides and "stride" not in overrides and grid > 1:
        inferred["stride"] = (overrides["img_size"] - patch) // (grid - 1)
    inferred.update(overrides)
    return VimConfig(**inferred)
