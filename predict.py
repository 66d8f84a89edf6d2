"""Label people's own photos with a trained checkpoint: photos in, label maps out; export to ONNX.

    python predict.py --checkpoint checkpoints/tiny/model.pt me.jpg holiday/ --out predictions
        [--device auto|cpu|cuda] [--batch_size 4] [--postprocess published|regions|none] [--no-postprocess]
        [--masks] [--probabilities] [--label_map u2net|atr|lip|fashn|FILE] [--classes top,pants [--merge]]
    python predict.py --checkpoint checkpoints/tiny/model.pt --export-onnx model.onnx
    python predict.py --checkpoint model.onnx me.jpg holiday/ --out predictions    # onnxruntime

INPUT is an image file (JPEG, PNG, WebP, BMP, GIF, TIFF, whatever PIL opens) or a folder (its image
files, sorted, not recursive). Photos are turned upright by their EXIF orientation and run at the
checkpoint's training scale (images.prepare_whole_image, as evaluation does). Per photo, named after
its file stem (a clash gets the folder name or a number appended), at the upright photo's size, labelled
by the boundary post-processing --postprocess (postprocess.METHODS: `published`, the released
algorithm, by default; `regions`) at the model's resolution, or by the per-pixel argmax with
--no-postprocess (= --postprocess none):

    <stem>.png          label ids as an indexed PNG coloured with the model's label set's palette
    <stem>_overlay.jpg  the photo with the label colours blended over it and a legend
    <stem>.json         file, width, height, label_set, per present label: id, pixels, fraction;
                        postprocessed (true or false) and postprocess (the method's name, or "none")
    <stem>_masks/       with --masks: one black/white PNG per present label, e.g. wrist_wearing.png
    <stem>_probs.npz    with --probabilities: float16 softmax and boundary at the model's resolution
    <stem>_classes/     with --classes a,b: a.png (black/white mask) and a_cutout.png (RGBA: the photo's
                        colours where the class is, transparent elsewhere), the same for b; with --merge
                        one a+b.png and a+b_cutout.png

The model's label set (which its checkpoint carries) names every output. --label_map NAME|FILE writes
them in a mapped label set instead (labels.load_label_map); a pixel whose label has no counterpart
there is 255 in <stem>.png, drawn in the photo's own colours in the overlay, and counted in the JSON's
"unmapped". --classes takes names of the output label set (or, with --label_map, of the model's); an
unknown name is an error that lists the valid ones.

A file that cannot be used is reported on stderr and skipped; the exit status is then 1.

--export-onnx writes the model as one ONNX file for any batch size and any height and width that are
multiples of the model's size_multiple: input `image` (B, 3, H, W) float32, normalised; outputs
`mask_logits` (B, L, H, W) and `boundary_logits` (B, H, W). Its metadata_props hold, as JSON, what
input preparation needs: mean, std, image_size, size_multiple, fit, and the label set: labels, palette
and label_set (its name). A --checkpoint ending in
.onnx runs on onnxruntime (CUDA with --device auto or cuda, when onnxruntime has it), prepared from
that metadata; everything else is as for a PyTorch checkpoint.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import dataclass
from itertools import chain, count
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps
from tqdm import tqdm

import unet
from device import PRECISIONS, keep_freed_memory, pick_device, pick_precision
from images import normalize, prepare_whole_image
from labels import DEEPFASHION_MM, IGNORE_INDEX, DataError, LabelMap, LabelSet, load_label_map, shipped_names
import postprocess

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
# Names in an exported ONNX file, and the metadata_props keys (JSON values) that describe its input.
ONNX_INPUT, ONNX_OUTPUTS = "image", ("mask_logits", "boundary_logits")
ONNX_METADATA = ("mean", "std", "image_size", "size_multiple", "labels")
ONNX_OPTIONAL = ("palette", "label_set", "fit")   # written since label sets; older files get the defaults

# A model's forward pass as predict.py uses it: (B, 3, H, W) normalised float32 on the CPU ->
# ((B, L, H, W) mask logits, (B, H, W) boundary logits), float32 tensors on any device.
Forward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class PhotoError(Exception):
    """An input that cannot be used; the message names the file and the reason."""


@dataclass
class Job:
    path: Path
    name: str                    # output stem
    photo: Image.Image           # RGB, upright
    model_input: torch.Tensor    # (3, Hp, Wp) normalised and padded
    valid_hw: tuple[int, int]    # (h, w) of model_input before padding


@dataclass(frozen=True)
class Backend:
    """A loaded model, whichever runtime runs it: how to prepare its inputs, and its forward pass."""
    image_size: int              # photos are scaled so their short side has this length
    size_multiple: int           # then padded to multiples of this
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    forward: Forward
    label_set: LabelSet = DEEPFASHION_MM   # what the model's label ids mean
    fit: str = "short_side"                # which side of a photo image_size measures (images.FITS)


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


def load_photo(path: Path | BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None
               ) -> Image.Image:
    """An image file (or a binary file object, say an upload's bytes) -> RGB at its upright size (EXIF
    orientation applied; animations: the first frame). Raises PhotoError naming the file (or `name`)
    for anything unreadable or above max_pixels."""
    label = name or path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size  # from the header: nothing is decoded yet
                if width * height > max_pixels:
                    raise PhotoError(f"{label}: {width}x{height} is {width * height / 1e6:.1f} megapixels, "
                                     f"above --max_pixels {max_pixels}")
                image.load()  # an animation stands on its first frame; truncation raises here
                upright = ImageOps.exif_transpose(image)  # a copy, valid after the file closes
        return to_rgb(upright)  # an unsupported mode raises ValueError
    except _PIL_ERRORS as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise PhotoError(f"{label}: cannot read image ({reason})") from err


def load_jobs(paths: list[Path], names: list[str], backend: Backend, max_pixels: int,
              skip: Callable[[str], None]) -> Iterator[Job]:
    """Photos prepared as the model's inputs, one at a time; unusable files go to skip(message)."""
    for path, name in zip(paths, names):
        try:
            photo = load_photo(path, max_pixels)
        except PhotoError as err:
            skip(str(err))
            continue
        yield Job(path, name, photo, *prepare_input(photo, backend))


def prepare_input(photo: Image.Image, backend: Backend) -> tuple[torch.Tensor, tuple[int, int]]:
    """An RGB photo -> its (3, Hp, Wp) normalised model input and the (h, w) before padding."""
    pixels, valid_hw = prepare_whole_image(photo, backend.image_size, backend.size_multiple, backend.fit)  # (3, Hp, Wp)
    return normalize(pixels[None], backend.mean, backend.std, torch.tensor([valid_hw]))[0], valid_hw


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

def torch_backend(path: Path, device: torch.device, precision: str = "auto") -> Backend:
    """A run.py checkpoint on PyTorch, under autocast as device.pick_precision chooses."""
    dtype = pick_precision(precision, device)
    model = unet.load_model(path, device).eval()

    def forward(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode(), torch.autocast(device.type, dtype, enabled=dtype is not None):
            output = model(inputs.to(device))
        return output.mask_logits, output.boundary_logits

    config = model.config
    return Backend(config.image_size, config.size_multiple, config.mean, config.std, forward, model.label_set,
                   config.fit)


def onnx_backend(path: Path, device: str) -> Backend:
    """A file of --export-onnx on onnxruntime, prepared as its metadata says; device as --device."""
    import onnxruntime  # here: only ONNX files need it
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file")
    cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    if device == "cuda" and not cuda:
        raise ValueError("--device cuda: this onnxruntime has no CUDA provider (install onnxruntime-gpu, "
                         "or use --device cpu)")
    providers = ["CUDAExecutionProvider"] if cuda and device != "cpu" else []
    try:
        session = onnxruntime.InferenceSession(str(path), providers=providers + ["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own types for missing, truncated or foreign files
        raise ValueError(f"{path}: not a readable ONNX model ({str(err).splitlines()[0][:200]})") from err
    meta = read_onnx_metadata(path, session.get_modelmeta().custom_metadata_map)

    def forward(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask_logits, boundary_logits = session.run(list(ONNX_OUTPUTS), {ONNX_INPUT: inputs.numpy()})
        return torch.from_numpy(mask_logits), torch.from_numpy(boundary_logits)

    return Backend(meta["image_size"], meta["size_multiple"], tuple(meta["mean"]), tuple(meta["std"]), forward,
                   meta["label_set"], meta.get("fit", "short_side"))


def read_onnx_metadata(path: Path, props: dict[str, str]) -> dict:
    """The ONNX_METADATA (and present ONNX_OPTIONAL) values of an exported file, and "label_set", the
    labels.LabelSet its labels (and palette) make; a file without a palette gets the default colours."""
    missing = [key for key in ONNX_METADATA if key not in props]
    if missing:
        raise ValueError(f"{path}: no {', '.join(missing)} in the ONNX metadata_props "
                         "(not written by predict.py --export-onnx?)")
    try:
        meta = {key: json.loads(props[key]) for key in (*ONNX_METADATA, *ONNX_OPTIONAL) if key in props}
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: ONNX metadata_props value is not JSON ({err})") from err
    try:
        meta["label_set"] = DEEPFASHION_MM if meta["labels"] == list(DEEPFASHION_MM.labels) and "palette" not in meta \
            else LabelSet(meta.get("label_set") or path.stem, tuple(meta["labels"]),
                          tuple(map(tuple, meta.get("palette") or ())), f"{path} metadata")
    except DataError as err:
        raise ValueError(f"{path}: the labels in its metadata are unusable: {err}") from err
    return meta


def load_backend(path: Path, device: str, precision: str = "auto") -> Backend:
    """An .onnx file on onnxruntime (fp32), anything else as a run.py checkpoint on PyTorch."""
    if path.suffix.lower() == ".onnx":
        return onnx_backend(path, device)
    return torch_backend(path, pick_device(device), precision)


def predict_batch(forward: Forward, inputs: torch.Tensor, valid_hw: list[tuple[int, int]]
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(B, 3, Hp, Wp) model inputs -> per image float32 softmax probabilities (L, h, w) and boundary
    probability (h, w) at the model's resolution, padding cropped off."""
    mask_logits, boundary_logits = forward(inputs)
    probs = mask_logits.float().softmax(dim=1)  # (B, L, Hp, Wp), softmax in fp32
    boundary = boundary_logits.float().sigmoid()  # (B, Hp, Wp)
    return [(probs[i, :, :h, :w].cpu().numpy(), boundary[i, :h, :w].cpu().numpy())
            for i, (h, w) in enumerate(valid_hw)]


def label_map(probs: np.ndarray, boundary: np.ndarray, size: tuple[int, int], method: str = "published"
              ) -> np.ndarray:
    """(L, h, w) probabilities, (h, w) boundary -> (H, W) uint8 label ids at size = (W, H), by the
    post-processing `method` (a postprocess.METHODS name, or "none" for the per-pixel argmax)."""
    labels = postprocess.run(method, probs, boundary)
    # labels are decided at the model's resolution; NEAREST keeps them ids when scaled to the photo
    return np.asarray(Image.fromarray(labels).resize(size, Image.Resampling.NEAREST))


# ---------------------------------------------------------------------------------- outputs

def _colour_table(label_set: LabelSet) -> np.ndarray:
    """(256, 3) uint8: the label set's colours by id, black for every other id (IGNORE_INDEX = unmapped)."""
    table = np.zeros((256, 3), np.uint8)
    table[:len(label_set)] = label_set.colours
    return table


def overlay(photo: Image.Image, labels: np.ndarray, pixels: dict[int, int],
            label_set: LabelSet = DEEPFASHION_MM) -> Image.Image:
    """The photo with the (H, W) label colours blended over it at 50% and a legend in the top-left
    corner: a swatch, the name and the share of pixels for each present label. Pixels of no label
    (IGNORE_INDEX: unmapped by a label map) keep the photo's colours."""
    blended = Image.blend(photo, Image.fromarray(_colour_table(label_set)[labels]), 0.5)
    if (labels == IGNORE_INDEX).any():
        blended.paste(photo, mask=Image.fromarray(labels == IGNORE_INDEX))
    draw = ImageDraw.Draw(blended)  # the default font
    total = labels.size
    rows = [(label, f"{label_set.labels[label]} {n / total:.1%}") for label, n in pixels.items()]
    if not rows:
        return blended
    line = draw.textbbox((0, 0), "Ag")[3] + 4  # row height: text plus a gap
    width = max(draw.textlength(text) for _, text in rows) + line + 10
    draw.rectangle((0, 0, width, len(rows) * line + 6), fill=(0, 0, 0))
    for row, (label, text) in enumerate(rows):
        y = 4 + row * line
        draw.rectangle((4, y, line, y + line - 4), fill=tuple(label_set.palette[label]), outline=(255, 255, 255))
        draw.text((line + 6, y), text, fill=(255, 255, 255))
    return blended


def file_name(label: str) -> str:
    """A label's name as a file name: "wrist wearing" -> "wrist_wearing"."""
    return label.replace(" ", "_").replace("/", "_")


def write_outputs(out_dir: Path, job: Job, labels: np.ndarray, method: str, masks: bool,
                  label_set: LabelSet = DEEPFASHION_MM, label_map: str = "") -> None:
    """<name>.png, <name>_overlay.jpg, <name>.json and with masks <name>_masks/<label>.png, for the
    (H, W) uint8 label ids of job's photo in `label_set` (IGNORE_INDEX: a pixel whose label the label
    map `label_map` leaves unmapped), labelled by post-processing `method` ("none": argmax)."""
    index = Image.fromarray(labels)  # mode L; putpalette makes it P with the label ids as indices
    index.putpalette(_colour_table(label_set).tobytes())
    index.save(out_dir / f"{job.name}.png")
    counts = np.bincount(labels.ravel(), minlength=256)  # (256,)
    pixels = {label: int(n) for label, n in enumerate(counts[:len(label_set)]) if n}
    overlay(job.photo, labels, pixels, label_set).save(out_dir / f"{job.name}_overlay.jpg", quality=90)
    summary = {"file": str(job.path), "width": job.photo.width, "height": job.photo.height,
               "label_set": label_set.name,
               "labels": {label_set.labels[label]: {"id": label, "pixels": n, "fraction": n / labels.size}
                          for label, n in pixels.items()},
               "postprocessed": method != "none", "postprocess": method}
    if label_map:
        unmapped = int(counts[IGNORE_INDEX])
        summary |= {"label_map": label_map, "unmapped": {"id": IGNORE_INDEX, "pixels": unmapped,
                                                         "fraction": unmapped / labels.size}}
    (out_dir / f"{job.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    if masks:
        folder = out_dir / f"{job.name}_masks"
        folder.mkdir(exist_ok=True)
        for label, name in enumerate(label_set.labels):
            path = folder / f"{file_name(name)}.png"
            if label in pixels:
                Image.fromarray(labels == label).save(path)  # mode 1: black/white
            else:
                path.unlink(missing_ok=True)  # a mask left by an earlier run would be a lie now


def write_classes(out_dir: Path, job: Job, chosen: dict[str, np.ndarray], merge: bool) -> dict[str, int]:
    """For `chosen` (class name -> (H, W) bool, its pixels), <name>_classes/<class>.png, a black/white
    mask, and <class>_cutout.png, the photo as RGBA: its own colours where the class is, fully
    transparent (and black) elsewhere; with merge one pair for all of them, named a+b+c. -> pixels per file."""
    folder = out_dir / f"{job.name}_classes"
    folder.mkdir(exist_ok=True)
    if merge:
        chosen = {"+".join(file_name(n) for n in chosen): np.logical_or.reduce(list(chosen.values()))}
    rgb = np.asarray(job.photo)                                                # (H, W, 3)
    written = {}
    for name, selected in chosen.items():
        Image.fromarray(selected).save(folder / f"{file_name(name)}.png")       # mode 1
        alpha = selected.astype(np.uint8) * 255                                 # (H, W)
        cutout = np.dstack([rgb * selected[..., None], alpha]).astype(np.uint8)  # (H, W, 4)
        Image.fromarray(cutout, "RGBA").save(folder / f"{file_name(name)}_cutout.png")
        written[name] = int(selected.sum())
    return written


def class_selectors(names: list[str], backend: Backend, mapping: LabelMap | None) -> dict[str, tuple[str, int]]:
    """--classes names -> (which labels, id): ("out", id) in the output label set (the mapped one with
    --label_map), else ("model", id) in the model's. An unknown name raises ValueError listing the valid ones."""
    out_set = mapping.target if mapping else backend.label_set
    sets = [("out", out_set)] + ([("model", backend.label_set)] if mapping else [])
    found, unknown = {}, []
    for name in names:
        for kind, label_set in sets:
            try:
                found[name] = (kind, label_set.index(name))
                break
            except DataError:
                continue
        else:
            unknown.append(name)
    if unknown:
        valid = "; ".join(f"{ls.name}: {', '.join(ls.labels)}" for _, ls in sets)
        raise ValueError(f"--classes: unknown class(es) {', '.join(map(repr, unknown))}; the valid ones ({valid})")
    return found


# ---------------------------------------------------------------------------------- export

def export_onnx(checkpoint: Path, destination: Path) -> None:
    """Write the checkpoint's model as one ONNX file (see the module docstring): dynamic batch, height
    and width, and the metadata that makes the file describe its own input."""
    model = unet.load_model(checkpoint).eval()
    config = model.config
    m = config.size_multiple
    # Sizes as m * blocks: the exporter then knows every height and width is a multiple of m, so the
    # model's own input check holds for all of them instead of specialising to the example.
    height, width = (m * torch.export.Dim(name, min=1) for name in ("height_blocks", "width_blocks"))
    # Odd block counts, for local attention: it runs in tiles of the largest of 8, 4, 2 pixels that
    # divides the size, chosen in Python, and the graph keeps the example's choice. With odd counts
    # that is, at every level, the tile that divides the level's size for any multiple of m (the
    # tile does not change the result, only the speed); an even example would keep tiles that do not
    # fit other sizes. Batch 2: the exporter fixes dimensions of size 1.
    example = torch.zeros(2, 3, 3 * m, 5 * m)
    # The dynamo exporter, torch's default since 2.9 (the TorchScript one is legacy and warns that it
    # is deprecated): it traces with symbolic sizes, so the size arithmetic (position encoding,
    # reshapes, local attention's index tensors) becomes graph operations, and dynamic_shapes says
    # exactly which sizes may vary. Local attention caches its index tensors in a dict keyed by size,
    # which torch.export's non-strict mode cannot hash; torch.onnx.export then falls back to its
    # strict-mode strategy, which handles it (with a warning about the cache). Calling
    # torch.export.export(strict=True) directly is no shortcut: without the exporter's shape settings
    # it bakes the example's tile counts into the graph.
    program = torch.onnx.export(model, (example,), dynamo=True, verbose=False, input_names=[ONNX_INPUT],
                                output_names=list(ONNX_OUTPUTS),
                                dynamic_shapes=({0: torch.export.Dim("batch", min=1), 2: height, 3: width},))
    program.model.metadata_props.update(
        {"mean": json.dumps(list(config.mean)), "std": json.dumps(list(config.std)),
         "image_size": json.dumps(config.image_size), "size_multiple": json.dumps(m),
         "labels": json.dumps(list(model.label_set.labels)),
         "palette": json.dumps([list(c) for c in model.label_set.palette]),
         "label_set": json.dumps(model.label_set.name), "fit": json.dumps(config.fit)})
    destination.parent.mkdir(parents=True, exist_ok=True)
    program.save(destination)  # one file; a separate weights file only past protobuf's 2 GB


# ---------------------------------------------------------------------------------- command line

def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="*", type=Path, metavar="INPUT",
                        help="image files, or folders whose image files (sorted, not recursive) are read")
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="a checkpoint of run.py (it carries the model config and input normalisation), "
                             "or an .onnx file of --export-onnx, run on onnxruntime")
    parser.add_argument("--out", type=Path, help="output folder, created if missing (required with INPUT)")
    parser.add_argument("--export-onnx", type=Path, metavar="FILE",
                        help="write the --checkpoint's model to this ONNX file instead of predicting")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="autocast dtype for a PyTorch checkpoint: auto = bf16 on GPUs that run it natively, "
                             "fp16 on older GPUs, fp32 on the CPU, as run.py trains (default: auto)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: cuda when available (default: auto)")
    parser.add_argument("--batch_size", type=_positive_int, default=4,
                        help="photos of one model input shape per forward pass (default: 4)")
    parser.add_argument("--max_pixels", type=_positive_int, default=DEFAULT_MAX_PIXELS,
                        help="skip larger photos instead of running out of memory; PIL's own "
                             f"decompression-bomb limit ({Image.MAX_IMAGE_PIXELS} pixels) applies too "
                             f"(default: {DEFAULT_MAX_PIXELS})")
    parser.add_argument("--postprocess", choices=[*postprocess.METHODS, "none"], default="published",
                        help="boundary post-processing (postprocess.py) at the model's resolution: published "
                             "(the released algorithm), regions, or none for the per-pixel argmax "
                             "(default: published)")
    parser.add_argument("--no-postprocess", dest="postprocess", action="store_const", const="none",
                        help="per-pixel argmax (= --postprocess none)")
    parser.add_argument("--masks", action="store_true",
                        help="also write <stem>_masks/<label>.png, one black/white PNG per present label")
    parser.add_argument("--probabilities", action="store_true",
                        help="also write <stem>_probs.npz: float16 'probabilities' (L, h, w) softmax and "
                             "'boundary' (h, w) sigmoid at the model's resolution (the photo scaled to the "
                             "training scale, padding cropped), not at the photo's size")
    parser.add_argument("--label_map", metavar="NAME|FILE",
                        help="write every output in a mapped label set: a shipped map ("
                             + ", ".join(shipped_names("maps")) + ", topformer) or a map file; pixels of "
                             "unmapped labels are 255 in <stem>.png")
    parser.add_argument("--classes", metavar="NAME,NAME,...",
                        help="also write <stem>_classes/<class>.png (a black/white mask) and <class>_cutout.png "
                             "(the photo as RGBA, transparent elsewhere) for these classes, names of the output "
                             "label set (the model's or --label_map's) or, with --label_map, of the model's")
    parser.add_argument("--merge", action="store_true",
                        help="with --classes: one mask and one cut-out for all the classes together, <a>+<b>.png")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked: either --export-onnx FILE, or INPUT... with --out."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.export_onnx and (args.inputs or args.out):
        parser.error("--export-onnx writes only the ONNX file: give no INPUT or --out with it")
    if not args.export_onnx and not (args.inputs and args.out):
        parser.error("give INPUT files or folders and --out (or --export-onnx FILE)")
    if args.export_onnx and (args.label_map or args.classes):
        parser.error("--label_map and --classes shape predictions; --export-onnx writes the model as it is")
    if args.merge and not args.classes:
        parser.error("--merge goes with --classes")
    args.classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else []
    return args


def predict_photos(args: argparse.Namespace) -> int:
    """Writes the outputs for every usable input; 1 if any was skipped, else 0."""
    try:  # problems with the whole run are reported before any work
        paths = collect_inputs(args.inputs)
        if not paths:
            raise ValueError(f"no image files in {', '.join(map(str, args.inputs))} "
                             f"(looked for {' '.join(sorted(IMAGE_SUFFIXES))})")
        names = output_names(paths)
        check_no_overwrite(paths, names, args.out)
        backend = load_backend(args.checkpoint, args.device, args.precision)
        keep_freed_memory(pick_device(args.device))   # a batch job: speed over handing memory back
        mapping = load_label_map(args.label_map, backend.label_set) if args.label_map else None
        selectors = class_selectors(args.classes, backend, mapping)
    except (FileNotFoundError, ValueError) as err:  # unet.CheckpointError and labels.DataError are ValueErrors
        build_parser().error(str(err))
    out_set = mapping.target if mapping else backend.label_set
    args.out.mkdir(parents=True, exist_ok=True)
    skipped: list[str] = []
    written = 0
    with tqdm(total=len(paths), unit="image", desc="predicting") as bar:
        def skip(message: str) -> None:
            bar.write(f"skipped {message}", file=sys.stderr)
            skipped.append(message)
            bar.update()

        jobs = load_jobs(paths, names, backend, args.max_pixels, skip)
        for batch in same_shape_batches(jobs, args.batch_size):
            results = predict_batch(backend.forward, torch.stack([job.model_input for job in batch]),  # (B, 3, Hp, Wp)
                                    [job.valid_hw for job in batch])
            for job, (probs, boundary) in zip(batch, results):
                labels = label_map(probs, boundary, job.photo.size, args.postprocess)   # the model's ids
                shown = mapping.apply(labels) if mapping else labels
                write_outputs(args.out, job, shown, args.postprocess, args.masks, out_set,
                              mapping.name if mapping else "")
                if selectors:
                    ids = {"out": shown, "model": labels}
                    write_classes(args.out, job, {n: ids[kind] == i for n, (kind, i) in selectors.items()},
                                  args.merge)
                if args.probabilities:
                    np.savez_compressed(args.out / f"{job.name}_probs.npz",
                                        probabilities=probs.astype(np.float16), boundary=boundary.astype(np.float16))
            written += len(batch)
            bar.update(len(batch))
    print(f"{written} written, {len(skipped)} skipped; outputs in {args.out}")
    return 1 if skipped else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.export_onnx:
        return predict_photos(args)
    print(f"exporting {args.checkpoint} (tracing takes up to about a minute for the published presets)")
    try:
        export_onnx(args.checkpoint, args.export_onnx)
    except (FileNotFoundError, ValueError) as err:  # unet.CheckpointError is a ValueError
        build_parser().error(str(err))
    print(f"wrote {args.export_onnx}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
