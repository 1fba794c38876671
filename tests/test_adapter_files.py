"""Issue 16, part 1: an adapter fine-tune as a small file of its own, back onto the checkpoint it started from.

The recipe users run: a space (here a tiny run; a converted ImageBind in practice) seeds a LoRA fine-tune
of one encoder through ``init_from``; ``bindspace-convert adapters`` writes what that run trained;
``apply-adapters`` puts it on the starting checkpoint, which then embeds the fine-tuned modality exactly
as the run does. A checkpoint with other frozen weights is refused by fingerprint, before writing.
"""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config

from bindspace.adapter_files import fingerprint, read_adapters, split_encoder
from bindspace.convert import main as convert_main
from bindspace.inference import BindSpace, load_checkpoint
from bindspace.modalities import get_modality
from bindspace.train import run

pytest.importorskip("peft")
pytestmark = pytest.mark.slow  # three short training runs

LORA = "{kind: lora, r: 4, alpha: 8, dropout: 0.0, target: [qkv, proj]}"
COMMON = ["graph.edges=[[image,audio]]", "eval.final=false", "checkpoint.every_n_train_steps=2", "optim.lr=3e-3"]


def train(run_dir, *overrides: str):
    run(compose_config([*COMMON, *overrides], run_dir=str(run_dir)))
    return run_dir / "checkpoints" / "last.ckpt"


def audio(bs: BindSpace) -> torch.Tensor:
    x = get_modality("audio").dummy_input(bs.model.configs["audio"].input, 5, torch.Generator().manual_seed(3))
    return bs.encode("audio", x)


def test_an_adapter_file_carries_a_fine_tune_back_onto_its_base(tmp_path, capsys):
    base = train(tmp_path / "base", "trainer.max_steps=2")
    tuned = train(
        tmp_path / "lora", "trainer.max_steps=4", f"init_from={base}",
        f"modalities.audio.trunk.adapter={LORA}", "modalities.audio.trunk.unlocked_layers=0",
    )  # fmt: skip
    # init_from loaded the base's plain trunk weights under the adapted names, and they stayed frozen.
    base_state, tuned_state = load_checkpoint(base)["state_dict"], load_checkpoint(tuned)["state_dict"]
    qkv = "model.trunks.audio.blocks.0.attn.qkv"
    assert torch.equal(tuned_state[f"{qkv}.base_layer.weight"], base_state[f"{qkv}.weight"])
    assert tuned_state[f"{qkv}.lora_B.default.weight"].abs().max() > 0  # the adapter trained

    file = tmp_path / "audio_lora.safetensors"
    assert convert_main(["adapters", str(tuned), str(file)]) == 0
    assert "audio: " in capsys.readouterr().out
    info, tensors, _ = read_adapters(file)
    assert list(info) == ["audio"] and any(".lora_A." in k for k in tensors)
    assert any(k.startswith("model.heads.audio.") for k in tensors)  # the head trained too: it travels along
    assert not any(".base_layer." in k for k in tensors)  # frozen weights stay behind
    assert file.stat().st_size < 0.1 * tuned.stat().st_size, (file.stat().st_size, tuned.stat().st_size)

    out = tmp_path / "applied.ckpt"
    assert convert_main(["apply-adapters", str(base), str(file), str(out)]) == 0
    applied, fine_tuned, start = (
        BindSpace.from_checkpoint(out),
        BindSpace.from_checkpoint(tuned),
        BindSpace.from_checkpoint(base),
    )
    assert applied.model.configs["audio"].trunk.adapter is not None
    assert torch.equal(audio(applied), audio(fine_tuned))
    assert not torch.allclose(audio(applied), audio(start))
    x = get_modality("image").dummy_input(start.model.configs["image"].input, 3, torch.Generator().manual_seed(4))
    assert torch.equal(applied.encode("image", x), start.encode("image", x))  # other encoders: the base's

    # The fingerprint is of the frozen weights the adapters were trained on: the tuned run's equal the base's.
    _, frozen = split_encoder(fine_tuned.model, "audio")
    assert fingerprint(frozen) == info["audio"]["base_sha256"]


def test_other_frozen_weights_and_no_adapter_are_refused_in_one_line(tmp_path, capsys):
    base = train(tmp_path / "base", "trainer.max_steps=2")
    other = train(tmp_path / "other", "trainer.max_steps=2", "seed=1")
    tuned = train(
        tmp_path / "lora", "trainer.max_steps=2", f"init_from={base}", f"modalities.audio.trunk.adapter={LORA}"
    )
    file = tmp_path / "a.safetensors"
    assert convert_main(["adapters", str(tuned), str(file)]) == 0
    capsys.readouterr()
    out = tmp_path / "out.ckpt"
    assert convert_main(["apply-adapters", str(other), str(file), str(out)]) == 2
    err = capsys.readouterr().err
    assert "the frozen weights of modalities.audio are not those" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert convert_main(["adapters", str(base), str(tmp_path / "none.safetensors")]) == 2
    assert "no modality has an adapter" in capsys.readouterr().err
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    assert convert_main(["apply-adapters", str(base), str(tmp_path / "junk.safetensors"), str(out)]) == 2
    assert "not a readable adapter file" in capsys.readouterr().err
