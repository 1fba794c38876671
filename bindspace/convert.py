"""``bindspace-convert``: another project's weights as a bindspace checkpoint.

    bindspace-convert imagebind .checkpoints/imagebind_huge.pth imagebind_huge.ckpt
    bindspace-convert imagebind small.pth small.ckpt --heads image=8 text=8 audio=4
    bindspace-convert merge runs/train/<time>/checkpoints/last.ckpt merged.ckpt
    bindspace-convert adapters runs/lora/checkpoints/last.ckpt audio_lora.safetensors
    bindspace-convert apply-adapters imagebind_huge.ckpt audio_lora.safetensors out.ckpt

``imagebind``: an ``ImageBindModel`` state dict (the released ``imagebind_huge.pth`` or any other size)
becomes a checkpoint that ``BindSpace.from_checkpoint`` loads, with the same embeddings after L2
normalisation. Widths, depths, patch sizes and the embedding size are read from the weights; attention
heads are not in them and default to ImageBind-huge's (image 16, text 16, audio 12, depth 8, thermal 12,
imu 8). ImageBind's temperatures (its postprocessors' logit scales) become the image edges'
``loss.logit_scales``, which ``bindspace-train init_from=`` loads. The source is read with
``torch.load(weights_only=True)`` (a file carrying code is refused) and the output written atomically.

``merge``: a checkpoint trained with adapters (``modalities.<m>.trunk.adapter``, peft) becomes one with the
adapters folded into the base weights (``W + scale * B @ A``), loadable with no adapter and no peft, with
the same embeddings.

``adapters`` / ``apply-adapters``: what an adapter fine-tune trained, as a small file of its own, and back
onto the checkpoint it started from (``bindspace.adapter_files``).

Every output is checked before anything is read: a checkpoint is a ``.ckpt`` file, an adapter file a
``.safetensors`` one, neither an existing folder nor one of the command's own inputs.

Exit status: 0 written, 2 a usage error or an input that does not convert (one line naming the keys).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from bindspace.cli import OneLineArgumentParser, check_output, did_you_mean, run_command
from bindspace.errors import ConfigError
from bindspace.utils.environment import describe_environment
from bindspace.utils.io import atomic_write

PROG = "bindspace-convert"


def _parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog=PROG,
        description=__doc__.split("\n")[0],
        epilog="examples:\n  bindspace-convert imagebind .checkpoints/imagebind_huge.pth imagebind_huge.ckpt\n"
        "  bindspace-convert imagebind small.pth small.ckpt --heads image=8 text=8",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="source", required=True, parser_class=OneLineArgumentParser)
    ib = sub.add_parser(
        "imagebind",
        help="an ImageBindModel state dict (.pth) -> a bindspace checkpoint",
        epilog="example:\n  bindspace-convert imagebind .checkpoints/imagebind_huge.pth imagebind_huge.ckpt",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ib.add_argument("src", type=Path, help="the ImageBind state dict (torch.save of ImageBindModel.state_dict())")
    ib.add_argument("out", type=Path, help="the bindspace checkpoint to write (.ckpt)")
    ib.add_argument(
        "--heads",
        nargs="+",
        default=[],
        metavar="MODALITY=N",
        help="attention heads per modality (bindspace or ImageBind names); default ImageBind-huge's",
    )
    add_merge_parser(sub)
    add_adapter_parsers(sub)
    return parser


def parse_heads(items: Sequence[str]) -> dict[str, int]:
    """``["image=16", "vision=16", ...]`` -> ``{"image": 16}``; ImageBind's ``vision`` is bindspace's ``image``."""
    from bindspace.interop.imagebind import HUGE_HEADS, MODALITIES

    out: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = MODALITIES.get(name, name)
        if not sep or name not in HUGE_HEADS:
            hint = did_you_mean(name, [*HUGE_HEADS, *MODALITIES]) if sep else ""
            raise ConfigError(f"--heads: expected MODALITY=N with a modality of {list(HUGE_HEADS)}, got {item!r}{hint}")
        if not value.isdigit() or int(value) < 1:
            raise ConfigError(f"--heads {name}: heads must be a positive integer, got {value!r}")
        out[name] = int(value)
    return out


def load_state_dict(src: Path) -> dict[str, torch.Tensor]:
    """``torch.load(src, weights_only=True)``: a flat mapping of names to tensors, or one line saying why not."""
    from bindspace.inference import CheckpointError, _first_line

    if not src.is_file():
        raise CheckpointError(f"{src}: no such file")
    try:
        sd = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and runtime errors alike for a bad file
        raise CheckpointError(f"{src}: not a readable torch file ({_first_line(err)})") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict) and "bindspace" not in sd:
        sd = sd["state_dict"]  # a training checkpoint's weights
    if not isinstance(sd, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in sd.items()):
        raise CheckpointError(f"{src}: not a state dict (a mapping of names to tensors)")
    return sd


def convert_imagebind(src: Path, out: Path, heads: dict[str, int] | None = None) -> Path:
    """Convert an ImageBind state dict file into a bindspace checkpoint at ``out`` (written atomically)."""
    from bindspace.inference import checkpoint_metadata
    from bindspace.interop.imagebind import MODALITIES, ConversionError, build_configs, convert_state_dict
    from bindspace.models.model import BindSpaceModel

    sd = load_state_dict(src)
    try:
        plain, state, embed_dim = convert_state_dict(sd, heads)
    except ConversionError as err:
        raise ConversionError(f"{src}: {err}") from None
    with torch.device("meta"):  # the metadata needs the configs only, not a second copy of the weights
        model = BindSpaceModel(build_configs(plain), embed_dim)
    others = [m for m in model.modalities if m != "image"]
    edges = [("image", m) for m in others] if "image" in model.modalities else []  # ImageBind's star
    # ImageBind's temperatures as the star's edge temperatures (what init_from loads): the log of each
    # modality's postprocessor scale, the other side of its image edge (bindspace's edge_scales rule).
    scales = {}
    for ib, m in MODALITIES.items():
        key = f"modality_postprocessors.{ib}.1.log_logit_scale"
        if edges and m in others and key in sd and not sd[key].is_meta:
            scales[f"loss.logit_scales.image|{m}.log_scale"] = sd[key].detach().float().reshape(()).clone()
    ckpt = {
        "state_dict": {**{f"model.{k}": v for k, v in state.items()}, **scales},
        "bindspace": checkpoint_metadata(model, edges),
        # Where the conversion ran; where ImageBind's weights were trained is not known, so the checkpoint
        # has no bindspace.environment (BindSpace.environment reads None).
        "converted_from": {
            "format": "imagebind",
            "source": str(src),
            "tensors": len(sd),
            "environment": describe_environment(),
        },
    }
    return atomic_write(out, lambda f: torch.save(ckpt, f))


# ---- merge: adapters folded into their base weights -----------------------------------------------------
def add_merge_parser(sub) -> None:
    merge = sub.add_parser(
        "merge",
        help="a checkpoint trained with adapters -> the same model with the adapters merged into its weights",
        epilog="example:\n  bindspace-convert merge runs/train/<time>/checkpoints/last.ckpt merged.ckpt",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    merge.add_argument("src", type=Path, help="a bindspace checkpoint whose trunks carry adapters (trunk.adapter)")
    merge.add_argument("out", type=Path, help="the merged checkpoint to write (.ckpt)")


def merge_checkpoint(src: Path, out: Path) -> tuple[Path, dict[str, int]]:
    """Merge every modality's adapters into its trunk; returns the written path and the merged layers per modality.

    The source is read with ``weights_only=True`` and rebuilt from its metadata without running code
    (:func:`~bindspace.inference.model_from_metadata`); the output holds the model's weights and the
    same metadata with ``trunk.adapter`` cleared (centring and bridges kept) and the edges' temperatures
    (``loss.logit_scales.*``, which ``init_from`` loads), written atomically.
    """
    import copy

    from bindspace.inference import CheckpointError, model_from_checkpoint_file
    from bindspace.nn.adapters import merge_adapters

    meta, model, ckpt = model_from_checkpoint_file(src, "src", "nothing says which trunks carry adapters")
    adapted = [m for m, c in model.configs.items() if c.trunk.adapter is not None]
    if not adapted:
        raise CheckpointError(f"{src}: no modality has an adapter (trunk.adapter is null for {model.modalities})")
    merged = {m: merge_adapters(model.trunks[m]) for m in adapted}
    merged_meta = copy.deepcopy(dict(meta))
    for m in adapted:
        merged_meta["modalities"][m]["trunk"]["adapter"] = None
    out_ckpt = {
        "state_dict": {
            **{k: v for k, v in ckpt["state_dict"].items() if not k.startswith("model.")},  # temperatures
            **{f"model.{k}": v for k, v in model.state_dict().items()},
        },
        "bindspace": merged_meta,
        "merged_from": {  # the training environment stays bindspace.environment; the merge's (a float sum) is here
            "source": str(src),
            "adapters": {m: meta["modalities"][m]["trunk"]["adapter"] for m in adapted},
            "environment": describe_environment(),
        },
    }
    return atomic_write(out, lambda f: torch.save(out_ckpt, f)), merged


# ---- adapters: a fine-tuned encoder's trained tensors as a file of their own --------------------------
def add_adapter_parsers(sub) -> None:
    export = sub.add_parser(
        "adapters",
        help="a checkpoint trained with adapters -> a small file of what each adapted encoder trained",
        epilog="example:\n  bindspace-convert adapters runs/lora/checkpoints/last.ckpt audio_lora.safetensors",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("src", type=Path, help="a bindspace checkpoint whose trunks carry adapters (trunk.adapter)")
    export.add_argument("out", type=Path, help="the adapter file to write (.safetensors)")
    apply = sub.add_parser(
        "apply-adapters",
        help="a checkpoint + an adapter file trained from it -> the checkpoint with those encoders fine-tuned",
        epilog="example:\n  bindspace-convert apply-adapters imagebind_huge.ckpt audio_lora.safetensors out.ckpt",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    apply.add_argument("base", type=Path, help="the checkpoint the adapters' run started from (init_from)")
    apply.add_argument("adapters", type=Path, help="an adapter file written by `bindspace-convert adapters`")
    apply.add_argument("out", type=Path, help="the checkpoint to write (.ckpt)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 written, 2 usage error or a state dict that does not convert)."""
    args = _parser().parse_args(argv)  # argparse exits with 2 on bad usage

    def body() -> int:
        # Before any compute: the format written, no folder, and never over the files read (merge a.ckpt a.ckpt).
        inputs = {k: v for k, v in vars(args).items() if k in ("src", "base", "adapters")}
        written = (".safetensors", "the adapter file") if args.source == "adapters" else (".ckpt", "the checkpoint")
        check_output(args.out, *written, inputs)
        if args.source == "adapters":
            from bindspace.adapter_files import export_adapters

            path, counts = export_adapters(args.src, args.out)
            what = ", ".join(f"{m}: {n} tensors" for m, n in counts.items())
            print(f"{PROG}: wrote the trained tensors of the adapted encoders ({what}) to {path}")
            return 0
        if args.source == "apply-adapters":
            from bindspace.adapter_files import apply_adapters

            path, applied = apply_adapters(args.base, args.adapters, args.out)
            print(f"{PROG}: applied {args.adapters} ({', '.join(applied)}) to {args.base}: {path}")
            return 0
        if args.source == "merge":
            path, merged = merge_checkpoint(args.src, args.out)
            layers = ", ".join(f"{m}: {n} layers" for m, n in merged.items())
            print(f"{PROG}: merged the adapters ({layers}) into {path}")
            return 0
        path = convert_imagebind(args.src, args.out, parse_heads(args.heads))
        print(f"{PROG}: wrote {path}")
        return 0

    return run_command(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
