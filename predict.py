"""Label people's own photos with a trained checkpoint: photos in, label maps out.

    python predict.py --checkpoint runs/demo/best.pt me.jpg holiday/ --out predictions
        [--device auto|cpu|cuda] [--batch_size 4] [--no-postprocess] [--masks] [--probabilities]

INPUT is an image file (JPEG, PNG, WebP, BMP, GIF, TIFF, whatever PIL opens) or a folder (its image
files, sorted, not recursive). Photos are turned upright by their EXIF orientation and run at the
checkpoint's training scale (dataset.prepare_whole_image, as evaluation does). Per photo, named after
its file stem (a clash gets the folder name or a number appended), at the upright photo's size:

    <stem>.png          label ids 0-23 as an indexed PNG coloured with dataset.PALETTE
    <stem>_overlay.jpg  the photo with the label colours blended over it and a legend
    <stem>.json         file, width, height, per present label: id, pixels, fraction; postprocessed
    <stem>_masks/       with --masks: one black/white PNG per present label, e.g. wrist_wearing.png
    <stem>_probs.npz    with --probabilities: float16 softmax and boundary at the model's resolution

A file that cannot be used is reported on stderr and skipped; the exit status is then 1.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import dataclass
from itertools import chain, count
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps
from tqdm import tqdm

import unet
from dataset import LABELS, NUM_LABELS, PALETTE, prepare_whole_image
from postprocess import postprocess

# Files inside a folder count as inputs only with these suffixes; files named explicitly are always tried.
IMAGE_SUFFIXES = frozenset((".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".webp", ".avif", ".bmp",
                            ".gif", ".tif", ".tiff"))
DEFAULT_MAX_PIXELS = 50_000_000
# PIL reports unreadable files with any of these, depending on the format and where decoding stops;
# its decompression-bomb warning is turned into an error, so a huge file is skipped, not decoded.
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError,
               Image.DecompressionBombWarning)
# A full batch runs at once; smaller groups wait for same-shaped photos, at most this many batches' worth.
_MAX_WAITING_BATCHES = 4


class PhotoError(Exception):
    """An input that cannot be used; the message names the file and the reason."""


@dataclass
class Job:
    path: Path
    name: str                    # output stem
    photo: Image.Image           # RGB, upright
    model_input: torch.Tensor    # (3, Hp, Wp) normalised and padded
    valid_hw: tuple[int, int]    # (h, w) of model_input before padding


# ---------------------------------------------------------------------------------- inputs

def collect_inputs(paths: Iterable[Path]) -> list[Path]:
    """Files as given and the image files of folders (sorted, not recursive), each file once."""
    paths = list(paths)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"no such file or folder: {', '.join(missing)}")
    found, seen = [], set()
    for path in paths:
        # "._x.jpg" files are macOS resource forks, not photos
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                       and not p.name.startswith(".")) if path.is_dir() else [path]
        for file in files:
            if file.resolve() not in seen:
                seen.add(file.resolve())
                found.append(file)
    return found


def output_names(paths: list[Path]) -> list[str]:
    """One output stem per input: its own stem; if taken (compared case-insensitively, as macOS and
    Windows file systems do), stem_<parent folder>, then stem_2, stem_3, ..."""
    taken: set[str] = set()
    names = []
    for path in paths:
        parent = path.absolute().parent.name
        candidates = chain([path.stem], [f"{path.stem}_{parent}"] if parent else [],
                           (f"{path.stem}_{k}" for k in count(2)))
        name = next(c for c in candidates if c.casefold() not in taken)
        taken.add(name.casefold())
        names.append(name)
    return names


def check_no_overwrite(paths: list[Path], names: list[str], out_dir: Path) -> None:
    """Raises ValueError if an output would replace an input (say --out is the photo folder and a.png is in it)."""
    inputs = {path.resolve() for path in paths}
    for name in names:
        for output in (out_dir / f"{name}.png", out_dir / f"{name}_overlay.jpg"):
            if output.resolve() in inputs:
                raise ValueError(f"{output}: is an input; the outputs would overwrite it (choose another --out)")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB, keeping the look of the photo."""
    if image.mode in ("I", "I;16", "I;16L", "I;16B"):
        # 16-bit grey (PNG opens as I;16 or I): 65535 is white. PIL's own convert clips at 255, which
        # would turn almost every pixel white; integer images beyond 16 bits are clipped.
        grey = np.rint(np.asarray(image, dtype=np.float64) / 257).clip(0, 255).astype(np.uint8)  # (H, W)
        return Image.fromarray(grey).convert("RGB")
    if image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info:
        # the training photos are studio shots on white: transparent parts become that white backdrop
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...


def load_photo(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An image file -> RGB at its upright size (EXIF orientation applied; animations: the first frame).
    Raises PhotoError naming the file for anything unreadable or above max_pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size  # from the header: nothing is decoded yet
                if width * height > max_pixels:
                    raise PhotoError(f"{path}: {width}x{height} is {width * height / 1e6:.1f} megapixels, "
                                     f"above --max_pixels {max_pixels}")
                image.load()  # an animation stands on its first frame; truncation raises here
                upright = ImageOps.exif_transpose(image)  # a copy, valid after the file closes
        return to_rgb(upright)  # an unsupported mode raises ValueError
    except _PIL_ERRORS as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise PhotoError(f"{path}: cannot read image ({reason})") from err


def load_jobs(paths: list[Path], names: list[str], config: unet.UNetConfig, max_pixels: int,
              skip: Callable[[str], None]) -> Iterator[Job]:
    """Photos prepared as the model's inputs, one at a time; unusable files go to skip(message)."""
    for path, name in zip(paths, names):
        try:
            photo = load_photo(path, max_pixels)
        except PhotoError as err:
            skip(str(err))
            continue
        model_input, valid_hw = prepare_whole_image(photo, config.image_size, config.size_multiple,
                                                    config.mean, config.std)
        yield Job(path, name, photo, model_input, valid_hw)


def same_shape_batches(jobs: Iterable[Job], batch_size: int) -> Iterator[list[Job]]:
    """Batches of up to batch_size jobs whose model inputs share one shape (a DeepFashion folder is all
    one size). Memory stays bounded: when too many photos wait for partners, every group goes as it is."""
    waiting: dict[torch.Size, list[Job]] = {}
    for job in jobs:
        group = waiting.setdefault(job.model_input.shape, [])
        group.append(job)
        if len(group) == batch_size:
            yield waiting.pop(job.model_input.shape)
        elif sum(map(len, waiting.values())) >= _MAX_WAITING_BATCHES * batch_size:
            groups, waiting = list(waiting.values()), {}
            yield from groups
    yield from waiting.values()


# ---------------------------------------------------------------------------------- the model

def predict_batch(model: unet.UNet, inputs: torch.Tensor, valid_hw: list[tuple[int, int]]
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(B, 3, Hp, Wp) model inputs -> per image float32 softmax probabilities (L, h, w) and boundary
    probability (h, w) at the model's resolution, padding cropped off. bf16 autocast on CUDA."""
    device = next(model.parameters()).device
    with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
        output = model(inputs.to(device))
    probs = output.mask_logits.float().softmax(dim=1)  # (B, L, Hp, Wp), softmax in fp32
    boundary = output.boundary_logits.float().sigmoid()  # (B, Hp, Wp)
    return [(probs[i, :, :h, :w].cpu().numpy(), boundary[i, :h, :w].cpu().numpy())
            for i, (h, w) in enumerate(valid_hw)]


def label_map(probs: np.ndarray, boundary: np.ndarray, size: tuple[int, int], use_postprocess: bool
              ) -> np.ndarray:
    """(L, h, w) probabilities, (h, w) boundary -> (H, W) uint8 label ids at size = (W, H)."""
    labels = postprocess(probs, boundary) if use_postprocess else probs.argmax(axis=0).astype(np.uint8)
    # labels are decided at the model's resolution; NEAREST keeps them ids when scaled to the photo
    return np.asarray(Image.fromarray(labels).resize(size, Image.Resampling.NEAREST))


# ---------------------------------------------------------------------------------- outputs

def overlay(photo: Image.Image, labels: np.ndarray, pixels: dict[int, int]) -> Image.Image:
    """The photo with the (H, W) label colours blended over it at 50% and a legend in the top-left
    corner: a swatch, the name and the share of pixels for each present label."""
    blended = Image.blend(photo, Image.fromarray(PALETTE[labels]), 0.5)
    draw = ImageDraw.Draw(blended)  # the default font
    total = sum(pixels.values())
    rows = [(label, f"{LABELS[label]} {n / total:.1%}") for label, n in pixels.items()]
    line = draw.textbbox((0, 0), "Ag")[3] + 4  # row height: text plus a gap
    width = max(draw.textlength(text) for _, text in rows) + line + 10
    draw.rectangle((0, 0, width, len(rows) * line + 6), fill=(0, 0, 0))
    for row, (label, text) in enumerate(rows):
        y = 4 + row * line
        draw.rectangle((4, y, line, y + line - 4), fill=tuple(PALETTE[label].tolist()), outline=(255, 255, 255))
        draw.text((line + 6, y), text, fill=(255, 255, 255))
    return blended


def write_outputs(out_dir: Path, job: Job, labels: np.ndarray, postprocessed: bool, masks: bool) -> None:
    """<name>.png, <name>_overlay.jpg, <name>.json and with masks <name>_masks/<label>.png, for the
    (H, W) uint8 label ids of job's photo."""
    index = Image.fromarray(labels)  # mode L; putpalette makes it P with the label ids as indices
    index.putpalette(PALETTE.tobytes())
    index.save(out_dir / f"{job.name}.png")
    counts = np.bincount(labels.ravel(), minlength=NUM_LABELS)  # (L,)
    pixels = {label: int(n) for label, n in enumerate(counts) if n}
    overlay(job.photo, labels, pixels).save(out_dir / f"{job.name}_overlay.jpg", quality=90)
    summary = {"file": str(job.path), "width": job.photo.width, "height": job.photo.height,
               "labels": {LABELS[label]: {"id": label, "pixels": n, "fraction": n / labels.size}
                          for label, n in pixels.items()},
               "postprocessed": postprocessed}
    (out_dir / f"{job.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    if masks:
        folder = out_dir / f"{job.name}_masks"
        folder.mkdir(exist_ok=True)
        for label, name in enumerate(LABELS):
            path = folder / f"{name.replace(' ', '_')}.png"
            if label in pixels:
                Image.fromarray(labels == label).save(path)  # mode 1: black/white
            else:
                path.unlink(missing_ok=True)  # a mask left by an earlier run would be a lie now


# ---------------------------------------------------------------------------------- command line

def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                        help="image files, or folders whose image files (sorted, not recursive) are read")
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="a checkpoint of run.py; it carries the model config and input normalisation")
    parser.add_argument("--out", type=Path, required=True, help="output folder, created if missing")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: cuda when available (default: auto)")
    parser.add_argument("--batch_size", type=_positive_int, default=4,
                        help="photos of one model input shape per forward pass (default: 4)")
    parser.add_argument("--max_pixels", type=_positive_int, default=DEFAULT_MAX_PIXELS,
                        help="skip larger photos instead of running out of memory; PIL's own "
                             f"decompression-bomb limit ({Image.MAX_IMAGE_PIXELS} pixels) applies too "
                             f"(default: {DEFAULT_MAX_PIXELS})")
    parser.add_argument("--postprocess", action=argparse.BooleanOptionalAction, default=True,
                        help="boundary post-processing (postprocess.py) at the model's resolution; "
                             "--no-postprocess: per-pixel argmax (default: on)")
    parser.add_argument("--masks", action="store_true",
                        help="also write <stem>_masks/<label>.png, one black/white PNG per present label")
    parser.add_argument("--probabilities", action="store_true",
                        help="also write <stem>_probs.npz: float16 'probabilities' (24, h, w) softmax and "
                             "'boundary' (h, w) sigmoid at the model's resolution (the photo scaled to the "
                             "training scale, padding cropped), not at the photo's size")
    return parser


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available (use --device cpu)")
    return torch.device(name)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # problems with the whole run are reported before any work
        paths = collect_inputs(args.inputs)
        if not paths:
            raise ValueError(f"no image files in {', '.join(map(str, args.inputs))} "
                             f"(looked for {' '.join(sorted(IMAGE_SUFFIXES))})")
        names = output_names(paths)
        check_no_overwrite(paths, names, args.out)
        device = _device(args.device)
        model = unet.load_model(args.checkpoint, device).eval()
    except (FileNotFoundError, ValueError) as err:  # unet.CheckpointError is a ValueError
        parser.error(str(err))
    args.out.mkdir(parents=True, exist_ok=True)
    skipped: list[str] = []
    written = 0
    with tqdm(total=len(paths), unit="image", desc="predicting") as bar:
        def skip(message: str) -> None:
            bar.write(f"skipped {message}", file=sys.stderr)
            skipped.append(message)
            bar.update()

        jobs = load_jobs(paths, names, model.config, args.max_pixels, skip)
        for batch in same_shape_batches(jobs, args.batch_size):
            results = predict_batch(model, torch.stack([job.model_input for job in batch]),  # (B, 3, Hp, Wp)
                                    [job.valid_hw for job in batch])
            for job, (probs, boundary) in zip(batch, results):
                labels = label_map(probs, boundary, job.photo.size, args.postprocess)
                write_outputs(args.out, job, labels, args.postprocess, args.masks)
                if args.probabilities:
                    np.savez_compressed(args.out / f"{job.name}_probs.npz",
                                        probabilities=probs.astype(np.float16), boundary=boundary.astype(np.float16))
            written += len(batch)
            bar.update(len(batch))
    print(f"{written} written, {len(skipped)} skipped; outputs in {args.out}")
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
