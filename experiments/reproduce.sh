#!/usr/bin/env bash
# Every run behind the numbers in README.md, docs/modality_gap.md and experiments/results/ (this commit).
# Sequential (the 2-core CPU machine: roughly 8 hours, summed from the runs' own wall_seconds), from the
# repository root after `make install`.
#   bash experiments/reproduce.sh [runs/exp]
set -euo pipefail
E=${1:-runs/exp}
B=.venv/bin
export WANDB_MODE=offline
mkdir -p "$E"

# make train's job, in a named folder, timed, and bindspace-eval on its checkpoint (README, docs/modality_gap.md)
/usr/bin/time -v -o "$E/train.time" $B/bindspace-train hydra.run.dir="$E/train"
$B/bindspace-eval ckpt_path="$E/train/checkpoints/last.ckpt" hydra.run.dir="$E/train_eval"
# the same job with the renderer before 2026-12-04 (data.synthetic.version=1), seeds 0-2, beside the anchor
# ablation's image arm (README, the data's version paragraph)
$B/bindspace-train -m experiment=ablate_anchor anchor=image data.synthetic.version=1 hydra.sweep.dir="$E/anchor_image_v1"

# the curriculum ablation (600 steps per arm), and the progressive arms at all_at_once's pair-batch budget
$B/bindspace-train -m experiment=ablate_curriculum hydra.sweep.dir="$E/ablate_curriculum"
$B/bindspace-train -m experiment=ablate_curriculum curriculum=progressive,progressive_distill \
  curriculum.stage.steps=200 trainer.max_steps=1000 hydra.sweep.dir="$E/ablate_curriculum_pairs"

# progressive with a pretrained, frozen anchor (spoken digits, MiniLM text anchor)
$B/bindspace-train -m experiment=pretrained_anchor hydra.sweep.dir="$E/pretrained_anchor"

# the anchor ablation
$B/bindspace-train -m experiment=ablate_anchor hydra.sweep.dir="$E/ablate_anchor"

# spoken digits, image anchor (README table), and bindspace-eval on seed 0 (docs/modality_gap.md)
$B/bindspace-train -m experiment=spoken_digits seed=0,1,2 hydra.sweep.dir="$E/spoken_digits"
$B/bindspace-eval ckpt_path="$E/spoken_digits/0/checkpoints/last.ckpt" data=spoken_digits prompts=spoken_digits \
  hydra.run.dir="$E/spoken_digits_eval"

# the loss ablation (InfoNCE, SigLIP, DCL; all_at_once, 600 steps), seed by seed, on both benchmarks
for s in 0 1 2; do
  $B/bindspace-train -m experiment=ablate_loss seed=$s hydra.sweep.dir="$E/ablate_loss_s$s"
done
for s in 0 1 2; do
  $B/bindspace-train -m experiment=spoken_digits loss.kind=infonce,siglip,dcl seed=$s hydra.sweep.dir="$E/ablate_loss_digits_s$s"
done

$B/bindspace-train -m experiment=ablate_loss loss.kind=siglip loss.siglip.bias.init=-3.434 seed=0,1,2 \
  hydra.sweep.dir="$E/ablate_loss_siglip_bias"

# the fine-tuning ablation of the pretrained MiniLM text anchor (spoken digits, 600 steps), seed by seed
for s in 0 1 2; do
  $B/bindspace-train -m experiment=ablate_finetune seed=$s hydra.sweep.dir="$E/ablate_finetune_s$s"
done

# small paired data (README "Small paired data"): experiment=small_data tuned on spoken digits, confirmed
# unchanged on spoken letters; beside each, the benchmark's default recipe on the same scored rows and the
# recipe without its image augmentation
L="data=spoken_letters prompts=spoken_letters graph.modalities=[image,text,audio,imu] graph.edges=[[text,image],[image,audio],[image,imu]] data.n_val=780"
$B/bindspace-train -m experiment=small_data seed=0,1,2 hydra.sweep.dir="$E/small_data_digits"
$B/bindspace-train -m experiment=small_data modalities.image.augment=null seed=0,1,2 hydra.sweep.dir="$E/small_data_digits_noaug"
$B/bindspace-train -m experiment=spoken_digits data.n_val=600 data.select_fraction=0.5 seed=0,1,2 \
  hydra.sweep.dir="$E/small_data_digits_default"
$B/bindspace-train -m experiment=small_data $L seed=0,1,2 hydra.sweep.dir="$E/small_data_letters"
$B/bindspace-train -m experiment=small_data $L modalities.image.augment=null seed=0,1,2 hydra.sweep.dir="$E/small_data_letters_noaug"
$B/bindspace-train -m experiment=spoken_letters data.n_val=780 data.select_fraction=0.5 seed=0,1,2 \
  hydra.sweep.dir="$E/small_data_letters_default"

# two spaces trained apart (image-audio, seed 0; image-text, seed 1) joined through images (README "Connect two spaces")
$B/bindspace-train graph.modalities=[image,audio] seed=0 logger=none hydra.run.dir="$E/connect/a"
$B/bindspace-train graph.modalities=[image,text] seed=1 logger=none hydra.run.dir="$E/connect/b"
for method in procrustes lstsq contrastive; do
  $B/bindspace-connect a="$E/connect/a/checkpoints/last.ckpt" b="$E/connect/b/checkpoints/last.ckpt" shared=image \
    fit=synthetic eval=synthetic method=$method out="$E/connect/$method.safetensors"
done

# a trained space, IMU bound into it (to the image anchor; to all five), and the six-modality run from scratch
# (README "Add a modality to a trained space")
$B/bindspace-train graph.modalities=[image,text,audio,depth,thermal] trainer.max_steps=300 logger=none \
  hydra.run.dir="$E/bind/base"
$B/bindspace-train experiment=bind_new_modality init_from="$E/bind/base/checkpoints/last.ckpt" new_modality=imu \
  graph.anchors=[image] trainer.max_steps=300 logger=none hydra.run.dir="$E/bind/imu"
$B/bindspace-train experiment=bind_new_modality init_from="$E/bind/base/checkpoints/last.ckpt" new_modality=imu \
  trainer.max_steps=300 logger=none hydra.run.dir="$E/bind/imu_all"
$B/bindspace-train trainer.max_steps=600 logger=none hydra.run.dir="$E/bind/scratch"

# determinism across the jobs of one process (README "Reproducibility"): seed 0 as a second job and as a first
$B/bindspace-train -m seed=1,0 trainer.max_steps=30 logger=none hydra.sweep.dir="$E/determinism_multi"
$B/bindspace-train seed=0 trainer.max_steps=30 logger=none hydra.run.dir="$E/determinism_single"

# reports into experiments/results/ (the two curriculum sweeps in one report: their jobs side by side)
mkdir -p "$E/curriculum_budgets"
for d in "$E"/ablate_curriculum/[0-9]*; do ln -sfn "$(realpath "$d")" "$E/curriculum_budgets/a$(basename "$d")"; done
for d in "$E"/ablate_curriculum_pairs/[0-9]*; do ln -sfn "$(realpath "$d")" "$E/curriculum_budgets/b$(basename "$d")"; done
$B/bindspace-report "$E/ablate_curriculum" --baseline all_at_once --out experiments/results/ablate_curriculum
$B/bindspace-report "$E/curriculum_budgets" --baseline all_at_once --out experiments/results/ablate_curriculum_budgets
# the curriculum table's other paired differences: against progressive (order, distillation) and progressive_global
$B/bindspace-report "$E/ablate_curriculum" --baseline progressive --out experiments/results/ablate_curriculum_vs_progressive
$B/bindspace-report "$E/ablate_curriculum" --baseline progressive_global \
  --out experiments/results/ablate_curriculum_vs_progressive_global
# the two renderers on the default job (seeds 0-2): version 1's sweep beside the anchor ablation's image-anchor jobs
mkdir -p "$E/renderer_versions"
for s in 0 1 2; do
  ln -sfn "$(realpath "$E/anchor_image_v1/$s")" "$E/renderer_versions/v1-s$s"
  ln -sfn "$(realpath "$E/ablate_anchor/$s")" "$E/renderer_versions/v2-s$s"
done
$B/bindspace-report "$E/renderer_versions" --out experiments/results/renderer_versions
$B/bindspace-report "$E/pretrained_anchor" --baseline all_at_once --out experiments/results/pretrained_anchor
$B/bindspace-report "$E/ablate_anchor" --baseline image --out experiments/results/ablate_anchor
$B/bindspace-report "$E/spoken_digits" --out experiments/results/spoken_digits
for bench in ablate_loss ablate_loss_digits; do
  mkdir -p "$E/$bench"
  for s in 0 1 2; do for d in "$E/${bench}_s$s"/[0-9]*; do ln -sfn "$(realpath "$d")" "$E/$bench/s$s-$(basename "$d")"; done; done
  $B/bindspace-report "$E/$bench" --baseline infonce --out "experiments/results/$bench"
done
mkdir -p "$E/ablate_finetune"
for s in 0 1 2; do for d in "$E/ablate_finetune_s$s"/[0-9]*; do ln -sfn "$(realpath "$d")" "$E/ablate_finetune/s$s-$(basename "$d")"; done; done
$B/bindspace-report "$E/ablate_finetune" --baseline finetune=frozen --out experiments/results/ablate_finetune
mkdir -p "$E/siglip_bias_cmp"
for s in 0 1 2; do
  ln -sfn "$(realpath "$E/ablate_loss_s$s/1")" "$E/siglip_bias_cmp/paper-s$s"
  ln -sfn "$(realpath "$E/ablate_loss_siglip_bias/$s")" "$E/siglip_bias_cmp/prior-s$s"
done
$B/bindspace-report "$E/siglip_bias_cmp" --out experiments/results/ablate_loss_siglip_bias
# small paired data: per benchmark, the three arms' jobs side by side in one report
for bench in digits letters; do
  mkdir -p "$E/small_data_${bench}_all"
  for arm in small_data small_data_noaug default; do
    sweep="$E/small_data_${bench}${arm#small_data}"
    [ "$arm" = default ] && sweep="$E/small_data_${bench}_default"
    for d in "$sweep"/[0-9]*; do ln -sfn "$(realpath "$d")" "$E/small_data_${bench}_all/$arm-$(basename "$d")"; done
  done
  $B/bindspace-report "$E/small_data_${bench}_all" --baseline "experiment=spoken_$bench" \
    --out "experiments/results/small_data_$bench"
done
