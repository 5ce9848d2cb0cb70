"""What defines a Vim model: the variants, and how to read one off a state dict's shapes."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, replace

from ..errors import CheckpointError

__all__ = [
    "VimConfig",
    "VARIANTS",
    "LIMITS",
    "MAX_VALUES",
    "config_from_state_dict",
    "check_declared",
    "parse_img_size",
    "format_img_size",
    "DYNAMIC",
]


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

    def replace(self, **changes) -> VimConfig:
        return replace(self, **changes)


VARIANTS: dict[str, VimConfig] = {
    "tiny": VimConfig(embed_dim=192),
    "small": VimConfig(embed_dim=384),
    "base": VimConfig(embed_dim=768),
    "tiny-s8": VimConfig(embed_dim=192, stride=8),
    "small-s8": VimConfig(embed_dim=384, stride=8),
    "base-s8": VimConfig(embed_dim=768, stride=8),
}

# The largest model vimdeploy builds from a file, checked against the shapes a file declares
# before anything is allocated. The official family tops out at Vim-B (embed 768, depth 24,
# 98M parameters, d_state 16, 1,000 classes; ImageNet-21k has 21,841); its longest trained
# sequence is stride 8 at 224px, 730 tokens. The headroom is generous: a variant nobody has
# trained yet still loads, a file declaring a 50M-class head does not.
LIMITS = {
    "embed_dim": 4096,
    "depth": 128,
    "d_state": 256,
    "expand": 8,
    "d_conv": 16,
    "dt_rank": 4096,
    "patch_size": 128,
    "in_chans": 64,
    "num_classes": 100_000,
    "tokens": 65_537,  # a 256 x 256 patch grid plus the class token
}
MAX_VALUES = 1_000_000_000  # values in one state dict: 10x Vim-B, 4 GB in fp32

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


def _values(shape) -> int:
    return math.prod(int(d) for d in shape)


def check_declared(shapes: dict[str, tuple]) -> None:
    """Refuse a state dict whose declared shapes hold more values than MAX_VALUES, naming
    its largest tensors, before any of them is read or allocated."""
    total = sum(_values(s) for s in shapes.values())
    if total > MAX_VALUES:
        largest = sorted(shapes, key=lambda k: _values(shapes[k]), reverse=True)[:3]
        named = ", ".join(f"{k} {tuple(int(d) for d in shapes[k])}" for k in largest)
        raise CheckpointError(
            f"the weights declare {total:,} values (largest: {named}); vimdeploy loads at most {MAX_VALUES:,} "
            "(10x Vim-B), so the file is refused before anything is allocated."
        )


def _check_limits(cfg: VimConfig, sources: dict[str, str]) -> None:
    sizes = {k: v for k, v in cfg.to_dict().items() if isinstance(v, int)}
    for name, value in sizes.items():
        if value < 1:
            raise CheckpointError(f"{sources.get(name, name)} gives {name} = {value}; it must be at least 1.")
    values = {**sizes, "tokens": cfg.tokens()}
    for name, limit in LIMITS.items():
        if values[name] > limit:
            raise CheckpointError(
                f"{sources.get(name, name)} declares {name} = {values[name]:,}; vimdeploy builds Vim models "
                f"with {name} <= {limit:,} (vimdeploy.model.config.LIMITS), so the file is refused before "
                "anything is allocated."
            )


def config_from_state_dict(sd: dict, **overrides) -> VimConfig:
    """Infer the architecture from the shapes of an official Vim state dict (tensors, or
    their shapes: a file's header is enough), within LIMITS.

    `overrides` (stride, img_size, ...) win over what is inferred; they are how users
    resolve the one ambiguity shapes cannot: stride 16 vs 8 for an unusual grid.
    """
    required = [
        "patch_embed.proj.weight",
        "pos_embed",
        "cls_token",
        "head.weight",
        "norm_f.weight",
        "layers.0.mixer.A_log",
        "layers.0.mixer.in_proj.weight",
        "layers.0.mixer.conv1d.weight",
        "layers.0.mixer.dt_proj.weight",
    ]
    missing = [k for k in required if k not in sd]
    if missing:
        raise CheckpointError(
            "this does not look like a Vim state dict: missing "
            + ", ".join(missing)
            + f" (it has {len(sd)} tensors, e.g. {', '.join(list(sd)[:5]) or 'none'})."
        )
    shapes = {k: tuple(int(d) for d in getattr(v, "shape", v)) for k, v in sd.items()}
    ranks = {
        "patch_embed.proj.weight": 4,
        "pos_embed": 3,
        "head.weight": 2,
        "layers.0.mixer.A_log": 2,
        "layers.0.mixer.conv1d.weight": 3,
        "layers.0.mixer.dt_proj.weight": 2,
    }
    misranked = [f"{k} {shapes[k]}" for k, rank in ranks.items() if len(shapes[k]) != rank]
    if misranked:
        raise CheckpointError("this does not look like a Vim state dict: wrong rank for " + ", ".join(misranked) + ".")
    embed_dim, in_chans, patch, patch_w = shapes["patch_embed.proj.weight"]
    if patch != patch_w:
        raise CheckpointError(f"non-square patches ({patch}x{patch_w}) are not a Vim model.")
    last_layer = max((k for k in sd if _LAYER_KEY.match(k)), key=lambda k: int(_LAYER_KEY.match(k).group(1)))
    depth = 1 + int(_LAYER_KEY.match(last_layer).group(1))
    d_inner, d_state = shapes["layers.0.mixer.A_log"]
    num_patches = shapes["pos_embed"][1] - 1
    grid = math.isqrt(max(num_patches, 0))
    if num_patches < 1 or grid * grid != num_patches:
        raise CheckpointError(f"pos_embed has {num_patches} patch positions, not a square grid.")
    stride, img_size = _infer_stride_and_img(grid, patch)
    inferred = dict(
        embed_dim=embed_dim,
        depth=depth,
        d_state=d_state,
        expand=d_inner // embed_dim if embed_dim else 0,
        d_conv=shapes["layers.0.mixer.conv1d.weight"][-1],
        dt_rank=shapes["layers.0.mixer.dt_proj.weight"][1],
        patch_size=patch,
        stride=stride,
        img_size=img_size,
        in_chans=in_chans,
        num_classes=shapes["head.weight"][0],
    )
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "stride" in overrides and "img_size" not in overrides:
        inferred["img_size"] = (grid - 1) * overrides["stride"] + patch
    elif "img_size" in overrides and "stride" not in overrides and grid > 1:
        inferred["stride"] = (overrides["img_size"] - patch) // (grid - 1)
    inferred.update(overrides)
    cfg = VimConfig(**inferred)
    sources = {**_LIMIT_SOURCES, "depth": last_layer}
    if {"img_size", "stride"} & set(overrides):
        sources.update(img_size="--trained-size", stride="--stride", tokens="pos_embed with --trained-size / --stride")
    _check_limits(cfg, sources)
    return cfg


# Where each limited field is read from, for the message that refuses it.
_LIMIT_SOURCES = {
    "embed_dim": "patch_embed.proj.weight",
    "patch_size": "patch_embed.proj.weight",
    "in_chans": "patch_embed.proj.weight",
    "d_state": "layers.0.mixer.A_log",
    "expand": "layers.0.mixer.A_log",
    "d_conv": "layers.0.mixer.conv1d.weight",
    "dt_rank": "layers.0.mixer.dt_proj.weight",
    "num_classes": "head.weight",
    "tokens": "pos_embed",
}
