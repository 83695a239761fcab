"""``rsis predict``: segment a user's photo from a list of expressions with a model bundle.

Expressions are embedded exactly as in training (same text model, verified by its file hash,
same tokenizer, same pooling, same PCA). The photo is turned upright as its EXIF orientation tag
says (as photo viewers show it; ``--orientation stored`` keeps the stored pixel order that
dataset annotations use), resized to the bundle's input size like the training cache, and the
masks are upsampled back to the photo's size. More expressions
than the model's longest sequence are processed in consecutive chunks; as in training, where
an image with more referents becomes several sequences, each chunk starts from a fresh
recurrent state.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, UnidentifiedImageError
from transformers import AutoConfig

from rsis.bundle import bundle_field, load_bundle
from rsis.cli import add_command
from rsis.cpu import use_threads
from rsis.data.cache import open_rgb, resize_mask, resize_rgb
from rsis.device import add_device_argument, resolve_device
from rsis.errors import UserError
from rsis.figures.palette import paint_referents
from rsis.figures.panels import GAP_PX, Row, compose, legend
from rsis.figures.text import Entry, draw_numbers
from rsis.inference import autocast
from rsis.io import atomic_path, require_writable_folder
from rsis.metrics import resize_scores
from rsis.predictions import encode_masks
from rsis.progress import progress_bar
from rsis.score import write_predictions_json
from rsis.text.embed import embed_sequences
from rsis.text.models import (
    load_model,
    load_tokenizer,
    max_length,
    resolve_model,
    weights_hash,
)
from rsis.text.pca import PcaSolution
from rsis.text.tokenize import encode, require_text

log = logging.getLogger(__name__)
Job = tuple[Path, list[str], list[int] | None]  # image, expressions, sent_ids (or None)
# Width of the overlay PNG (the photo and its white margins): the legend under the photo wraps
# to the photo's width, and its 15-pixel text stays readable between these.
OVERLAY_MIN_WIDTH = 320
OVERLAY_MAX_WIDTH = 1600
NO_PIXELS = "(no pixels)"  # after a legend entry whose mask is empty


def _require_text_size(where: str, bundle: dict, size: int) -> None:
    """Refuse a bundle whose PCA (or, without one, whose network) reads embeddings of another
    size than ``size``, its text model's; ``where`` names the bundle in the message."""
    if bundle["pca"] is None:
        want = f"{size}, the size of the text model's embeddings"
        bundle_field(bundle, where, "model_config.text_dim", want, lambda value: value == size)
    else:
        want = f"a ({size},) tensor, one value per dimension of the text model's embeddings"
        bundle_field(bundle, where, "pca.mean", want, lambda value: value.shape == (size,))


class TextPipeline:
    """The training-time text pipeline of a bundle: tokenizer, encoder, pooling, PCA.

    Args:
        bundle: the entries of a bundle (``load_bundle``).
        where: how messages call the bundle (``--model bundle.pt``).
    """

    def __init__(self, bundle: dict, where: str, device: torch.device) -> None:
        identity, pca = bundle["text"], bundle["pca"]
        source = resolve_model(str(identity["model"]))
        found = weights_hash(source)
        if found != identity["model_hash"]:
            expected = str(identity["model_hash"])[:12]
            raise UserError(
                f"text model {identity['model']!r} at {source.path} is not the one {where} "
                f"was trained with (weights hash {found[:12]}, expected {expected})"
            )
        _require_text_size(where, bundle, AutoConfig.from_pretrained(source.path).hidden_size)
        self.tokenizer = load_tokenizer(source)
        self.limit = max_length(source, self.tokenizer)
        self.model = load_model(source).to(device)
        self.embedding = str(identity["embedding"])
        self.pca = (
            None if pca is None else PcaSolution(pca["components"].numpy(), pca["mean"].numpy())
        )
        self.device = device

    def __call__(self, expressions: list[str]) -> tuple[torch.Tensor, np.ndarray]:
        """(N, dim) float32 embeddings of ``expressions``, as the model was trained on, and
        (N,) bool: whether each was longer than ``limit`` tokens and cut to its first ones."""
        ids, ptr, truncated = encode(self.tokenizer, expressions, self.limit)
        pooled, mean = embed_sequences(
            self.model, ids, ptr, pad_id=self.tokenizer.pad_token_id, progress=False
        )
        vectors = pooled if self.embedding == "pooled" else mean
        if self.pca is not None:
            vectors = self.pca.project(vectors)
        return torch.from_numpy(vectors).float(), truncated


@dataclass
class Prediction:
    """Masks of one image: at the photo's size, and at the network's input size."""

    photo: np.ndarray  # (H, W, 3) uint8 RGB: the photo as segmented
    orientation: str  # "exif" (turned upright as its EXIF tag says) or "stored" (pixel order)
    expressions: list[str]
    masks: np.ndarray  # (N, H, W) bool at the photo's size
    network_masks: np.ndarray  # (N, h, w) bool at the bundle's input size
    scores: np.ndarray  # (N,) mean foreground probability inside each mask
    truncated: np.ndarray  # (N,) bool: expression cut to the text model's maximum tokens


class Predictor:
    """A loaded bundle, ready to segment images.

    Args:
        bundle: path of a file written by ``rsis export`` (or training).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:<index>``.
        upright: turn each photo as its EXIF orientation tag says before segmenting it
            (``rsis.data.cache.open_rgb``); masks and overlay are then in that orientation.
    """

    def __init__(self, bundle: Path, device: str = "auto", upright: bool = True) -> None:
        self.device = resolve_device(device)
        self.upright = upright
        model, self.bundle = load_bundle(Path(bundle), option="--model")
        self.model = model.to(self.device)
        self.text = TextPipeline(self.bundle, f"--model {bundle}", self.device)
        self.height, self.width = self.bundle["input"]["image_size"]
        self.chunk = int(self.bundle["max_referents"])

    @torch.inference_mode()
    def __call__(self, image_path: Path, expressions: list[str]) -> Prediction:
        """Segment ``image_path`` once per expression, in order; warn about an expression
        longer than the text model reads (it is cut to its first tokens, as in training)."""
        if not expressions:
            raise UserError("no expressions given: pass at least one --expr")
        photo = open_rgb(image_path, upright=self.upright)  # clear error if bad
        original = (photo.height, photo.width)
        pixels = resize_rgb(photo, self.height, self.width)
        image = torch.from_numpy(pixels).permute(2, 0, 1)[None].to(self.device)
        text, truncated = self.text(expressions)
        for number in np.flatnonzero(truncated) + 1:
            log.warning(
                "%s: expression %d is longer than the text model reads: only its first %d "
                "tokens (special tokens included) were used",
                image_path,
                number,
                self.text.limit,
            )
        text = text.to(self.device)
        logits = []
        for start in range(0, len(expressions), self.chunk):
            with autocast(self.device):
                out = self.model(image, text[None, start : start + self.chunk])
            logits.append(out[0].float())
        logits = torch.cat(logits)
        # One expression at a time: a 24-megapixel photo's float map is 96 MB per expression.
        masks = np.empty((len(expressions), *original), bool)
        scores = np.zeros(len(expressions), np.float32)
        for index, logit in enumerate(logits):
            full = resize_scores(logit[None], original)[0]
            mask = full > 0
            masks[index] = mask.cpu().numpy()
            if masks[index].any():
                scores[index] = torch.sigmoid(full[mask]).mean().item()
        return Prediction(
            photo=np.asarray(photo),
            orientation="exif" if self.upright else "stored",
            expressions=list(expressions),
            masks=masks,
            network_masks=(logits > 0).cpu().numpy(),
            scores=scores,
            truncated=truncated,
        )


def write_outputs(
    image_path: Path, prediction: Prediction, out_dir: Path, stem: str | None = None
) -> dict:
    """Write one PNG mask per expression, an overlay with a legend, and a JSON with RLEs,
    named ``<stem>_mask01.png`` (numbered from 1, as the legend), ``<stem>_overlay.png``,
    ``<stem>.json`` (``stem``: the image's file stem unless given); then remove the mask PNGs
    of ``stem`` that an earlier run with more expressions left in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or image_path.stem
    records = []
    for k, mask in enumerate(prediction.masks):
        number = k + 1
        records.append(
            {
                "number": number,
                "expression": prediction.expressions[k],
                "truncated": bool(prediction.truncated[k]),
                **_write_mask(out_dir / f"{stem}_mask{number:02d}.png", mask),
                "score": float(prediction.scores[k]),
            }
        )
    overlay = out_dir / f"{stem}_overlay.png"
    _write_overlay(prediction, overlay)
    result = {
        "image": str(image_path),
        "overlay": overlay.name,
        "orientation": prediction.orientation,
        "number": "the expression's position, from 1, as in the overlay and the mask's file name",
        "truncated": "true: the expression is longer than the text model reads, only its first "
        "tokens were used",
        "score": "mean foreground probability inside the mask (logit > 0)",
        "masks": records,
    }
    with atomic_path(out_dir / f"{stem}.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    _remove_stale_masks(out_dir, stem, {record["mask_png"] for record in records})
    return result


def _write_mask(path: Path, mask: np.ndarray) -> dict:
    """Write (H, W) bool ``mask`` as a black-and-white PNG at ``path``; return its JSON
    fields: the file's name, the COCO RLE and the area in pixels."""
    with atomic_path(path) as tmp:
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp, format="PNG")
    rle = encode_masks(mask[None])[0]
    return {
        "mask_png": path.name,
        "rle": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
        "area": int(mask.sum()),
    }


def _remove_stale_masks(out_dir: Path, stem: str, written: set[str]) -> None:
    """Delete the files of ``out_dir`` named exactly ``<stem>_mask<digits>.png`` that are not
    in ``written``: masks of an earlier run of the same image with more expressions, which
    the new JSON does not list."""
    pattern = re.compile(rf"{re.escape(stem)}_mask\d+\.png")
    for path in out_dir.glob(f"{glob.escape(stem)}_mask*.png"):
        if pattern.fullmatch(path.name) and path.name not in written:
            log.info("removing %s: an earlier run's mask, beyond this run's expressions", path)
            path.unlink()


def empty_masks(prediction: Prediction) -> list[int]:
    """The 1-based numbers of the expressions whose mask has no pixel (warned about, and
    marked ``(no pixels)`` in the overlay's legend)."""
    return [number for number, mask in enumerate(prediction.masks, 1) if not mask.any()]


def overlay_photo_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) of a photo as the overlay shows it: its own size, scaled (aspect ratio
    kept) so that the overlay, photo plus margins, is ``OVERLAY_MIN_WIDTH`` to
    ``OVERLAY_MAX_WIDTH`` pixels wide."""
    shown = min(max(width, OVERLAY_MIN_WIDTH - 2 * GAP_PX), OVERLAY_MAX_WIDTH - 2 * GAP_PX)
    return max(1, round(height * shown / width)), shown


def overlay_legend(prediction: Prediction) -> list[Entry]:
    """The overlay's legend: the expressions numbered from 1 in their masks' colours, an
    expression whose mask is empty marked ``(no pixels)``."""
    empty = set(empty_masks(prediction))
    numbered = enumerate(prediction.expressions, 1)
    return legend([f"{text} {NO_PIXELS}" if k in empty else text for k, text in numbered])


def _write_overlay(prediction: Prediction, out: Path) -> None:
    """The photo with each mask painted in its colour (outline and light fill) and its number
    on it and, under it, the legend wrapped to the photo's width; the photo is scaled as
    ``overlay_photo_size`` says (up with nearest neighbour, down bilinearly; its masks keep
    the photo's size)."""
    photo, masks = prediction.photo, prediction.masks
    height, width = overlay_photo_size(*photo.shape[:2])
    if width != photo.shape[1]:
        up = width > photo.shape[1]
        resample = Image.Resampling.NEAREST if up else Image.Resampling.BILINEAR
        photo = np.asarray(Image.fromarray(photo).resize((width, height), resample))
        masks = np.stack([resize_mask(mask.astype(np.uint8), height, width) for mask in masks])
    painted = draw_numbers(paint_referents(photo, masks), masks)
    compose([Row([painted], overlay_legend(prediction))], None, out)


def _jobs(args: argparse.Namespace) -> list[Job]:
    """The jobs of ``--image/--expr`` or of a JSONL ``--batch``, which exclude each other."""
    if args.batch:
        if args.image or args.expr:
            raise UserError(
                "--batch reads images and expressions from its file: leave out --image and "
                "--expr, or --batch"
            )
        return _batch_jobs(Path(args.batch))
    if not args.image:
        raise UserError("give --image with --expr, or --batch FILE.jsonl")
    if len(args.image) > 1:
        raise UserError(
            f"--image given {len(args.image)} times ({', '.join(args.image)}): predict "
            "takes one photo; for several, write a --batch file"
        )
    return [(Path(args.image[0]), args.expr or [], None)]


def _batch_lines(path: Path) -> list[tuple[int, str]]:
    """The non-blank lines of the ``--batch`` file, UTF-8 decoded, with their 1-based numbers."""
    if path.is_dir():
        raise UserError(f"--batch {path} is a folder: give a JSONL file, one job per line")
    if not path.is_file():
        raise UserError(f"--batch {path}: no such file; give a JSONL file, one job per line")
    lines = []
    with path.open("rb") as file:
        for number, raw in enumerate(file, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise UserError(
                    f"--batch {path}, line {number}: not UTF-8 text (byte "
                    f"{raw[error.start]:#04x} at column {error.start + 1}): give a JSONL file "
                    "saved as UTF-8"
                ) from error
            if line.strip():
                lines.append((number, line))
    return lines


def _parse_job(line: str) -> Job:
    """One ``--batch`` line as a job; a malformed one raises ``ValueError`` or ``TypeError``
    (``json.JSONDecodeError`` is a ``ValueError``), or ``KeyError`` for a missing field."""
    record = json.loads(line)
    expressions = record["expressions"]
    if not isinstance(expressions, list) or not all(isinstance(e, str) for e in expressions):
        raise TypeError("expressions must be a list of strings")
    sent_ids = record.get("sent_ids")
    if sent_ids is not None and (
        len(sent_ids) != len(expressions)
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in sent_ids)
    ):
        raise TypeError("sent_ids must be one integer per expression")
    return Path(record["image"]), expressions, sent_ids


def _batch_jobs(path: Path) -> list[Job]:
    """The jobs of a JSONL ``--batch`` file, one per non-blank line; a malformed line, or a
    sent_id given twice (``rsis score`` would refuse it), is refused naming its line."""
    jobs: list[Job] = []
    first_line: dict[int, int] = {}  # sent_id -> the line that gave it
    for number, line in _batch_lines(path):
        try:
            job = _parse_job(line)
        except (ValueError, KeyError, TypeError) as error:
            raise UserError(
                f"--batch {path}, line {number}: expected "
                '{"image": "photo.jpg", "expressions": ["...", ...], "sent_ids": [optional]} '
                f"({error})"
            ) from error
        for sent_id in job[2] or []:
            if sent_id in first_line:
                where = (
                    "twice"
                    if first_line[sent_id] == number
                    else f"on line {first_line[sent_id]} and"
                )
                raise UserError(
                    f"--batch {path}: sent_id {sent_id} is given {where} on line {number}; "
                    "give each sentence once (rsis score refuses a sent_id predicted twice)"
                )
            first_line[sent_id] = number
        jobs.append(job)
    if not jobs:
        raise UserError(f"--batch {path} holds no jobs: write one JSON object per line")
    return jobs


def check_jobs(jobs: list[Job], out_dir: Path) -> None:
    """Refuse, before any model is loaded, what would fail late: a missing image, an empty
    expression or one that is not text, an ``--out`` that is a file or cannot be written."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file: give a folder (it is created if missing)")
    require_writable_folder(out_dir, f"--out {out_dir}")
    for number, (image, expressions, _) in enumerate(jobs, 1):
        if not image.is_file():
            raise UserError(f"job {number}: image {image} not found")
        if not expressions:
            raise UserError(f"job {number} ({image}): no expressions; give at least one")
        for index, expression in enumerate(expressions, 1):
            if not expression.strip():
                raise UserError(
                    f"job {number} ({image}): expression {index} is empty; give some words"
                )
            require_text(expression, f"job {number} ({image}): expression {index}")


def output_stems(images: list[Path]) -> list[str]:
    """One distinct output name per job: the image's file stem, and for a stem already taken
    (``a/photo.jpg`` then ``b/photo.jpg``, or one image on two lines, as an image with more
    referents than a sequence holds is) ``photo-2``, ``photo-3`` ..., never the stem of
    another job's image, so no job overwrites another's outputs."""
    originals = {image.stem for image in images}
    taken: set[str] = set()
    stems = []
    for image in images:
        stem, number = image.stem, 1
        while stem in taken or (number > 1 and stem in originals):
            number += 1
            stem = f"{image.stem}-{number}"
        taken.add(stem)
        stems.append(stem)
    return stems


def turned_by_exif(path: Path) -> bool:
    """Whether the file's EXIF orientation tag turns its pixels (a tag other than 1)."""
    try:
        with Image.open(path) as image:
            return image.getexif().get(ExifTags.Base.Orientation, 1) != 1
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
        return False  # not an image: open_rgb refuses it, naming the file, in its turn


def _predict_command(args: argparse.Namespace) -> None:
    use_threads(0)  # torch's default threads, subnormal floats flushed
    jobs = _jobs(args)
    check_jobs(jobs, Path(args.out))
    if args.score_json and any(sent_ids is None for _, _, sent_ids in jobs):
        raise UserError("--score-json needs --batch lines that give sent_ids for every expression")
    if args.score_json:
        if Path(args.score_json).is_dir():
            raise UserError(f"--score-json {args.score_json} is a folder: give a .json file name")
        require_writable_folder(Path(args.score_json).parent, f"--score-json {args.score_json}")
    if args.score_json and args.orientation == "exif":
        for image, _, _ in jobs:
            if turned_by_exif(image):
                raise UserError(
                    f"{image} has an EXIF orientation tag: its dataset annotations refer to the "
                    "stored pixel order, so --score-json needs --orientation stored"
                )
    predictor = Predictor(args.model, args.device, upright=args.orientation == "exif")
    samples: list[tuple[int, int | None, dict]] = []
    stems = output_stems([image for image, _, _ in jobs])
    for (image_path, expressions, sent_ids), stem in progress_bar(
        list(zip(jobs, stems, strict=True)), desc="predict", unit="img", disable=len(jobs) < 2
    ):
        prediction = predictor(image_path, expressions)
        result = write_outputs(image_path, prediction, Path(args.out), stem)
        overlay = Path(args.out) / result["overlay"]
        log.info("%s: %d masks, overlay %s", image_path, len(result["masks"]), overlay)
        for number in empty_masks(prediction):
            expression = expressions[number - 1]
            log.warning("%s: expression %d %r: empty mask", image_path, number, expression)
        if sent_ids is not None:
            masks = zip(sent_ids, result["masks"], strict=True)
            samples += [(sent_id, None, mask["rle"]) for sent_id, mask in masks]
    if args.score_json:
        write_predictions_json(args.score_json, samples)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rsis predict``."""
    p = add_command(subparsers, "predict")
    p.add_argument("--model", type=Path, required=True, help="model bundle (rsis export)")
    # append: an --image given twice is refused by _jobs, not silently replaced
    p.add_argument("--image", action="append", help="the photo (one; for several, --batch)")
    p.add_argument("--expr", action="append", help="a referring expression (repeat, in order)")
    p.add_argument(
        "--batch",
        help='JSONL (UTF-8): {"image": ..., "expressions": [...], "sent_ids": [...] (optional)} '
        "per line, instead of --image and --expr; image paths relative to the current folder; "
        "every line is checked before the model loads; an image that cannot be decoded stops "
        "the batch there (the images before it keep their complete outputs)",
    )
    p.add_argument(
        "--score-json",
        type=Path,
        help="also write every mask with its sent_id as rsis score's input (needs sent_ids)",
    )
    p.add_argument(
        "--out",
        default="predictions",
        help="output folder (default: predictions); an image's earlier outputs there are "
        "replaced, its mask PNGs beyond this run's expressions removed",
    )
    add_device_argument(p)
    p.add_argument(
        "--orientation",
        choices=("exif", "stored"),
        default="exif",
        help="exif: turn each photo upright as its EXIF orientation tag says, as photo viewers "
        "show it (default); stored: keep the stored pixel order, which dataset annotations "
        "(COCO, RefCOCO) refer to",
    )
    p.set_defaults(func=_predict_command)
