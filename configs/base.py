"""Shared defaults of every experiment config (values of GLUS's train_ds.py / inference_iter.py)."""

from ml_collections import ConfigDict


def base_config() -> ConfigDict:
    c = ConfigDict()
    # Model: a preset name from glus_jax.models.glus.PRESETS, or a model directory to load.
    c.model = ConfigDict(
        dict(
            preset="glus_s",
            init_from="",  # model directory (converted LISA-7B-v1 + sam2_hiera_large.pt) or ""
            # Without init_from, `glus-jax train` converts these (see glus_jax/train/loop.py); without
            # them either, a random `preset` with the tokenizer directory `tokenizer` (tests).
            lisa_checkpoint="",  # LISA-7B-v1 HF directory (or hub id)
            vision_tower="",  # openai/clip-vit-large-patch14 directory (or hub id)
            sam2_checkpoint="",  # sam2_hiera_large.pt
            sam2_config="hiera_l",  # SAM2 preset name or original yaml
            tokenizer="",
            # Random presets only: a glus-jax model directory whose SAM2 (same architecture) replaces the
            # random one, as GLUS starts from a pretrained SAM2 (e.g. `benchmarks.sam_selection --save`).
            sam2_from="",
            dtype="bfloat16",  # compute dtype; params stay float32
            remat=True,  # rematerialise LLM blocks in training
            # Random presets only (train.loop.scale_init): LLaMA q/k and the [SEG] projection's init x these.
            qk_init_scale=1.0,
            prompt_init_scale=1.0,
        )
    )
    c.data = ConfigDict(
        dict(
            root="",
            datasets=("mevis", "refyoutube_vos"),
            sample_rates=(1, 1),
            context_frames=4,
            question_frames=4,
            max_expressions=3,  # --num_classes_per_sample
            max_seq_len=512,  # --model_max_length
            image_size=1024,  # SAM2 input size S (train_ds.py); also sets the trained model's SAM2 size
            clip_image_size=224,  # CLIP input size (openai/clip-vit-large-patch14 CLIPImageProcessor)
            max_mask_size=(1280, 1280),  # (H, W) padded GT canvas: must hold the largest frame of the data
            num_workers=4,  # grain worker processes decoding batches (0 = in the training process)
            num_threads=1,  # threads per process building batches in parallel
            prefetch=2,  # batches buffered per process
            source="files",  # "files": the released layout under `root`; "tfds": builds under `tfds_dir`
            tfds_dir="",  # `glus-jax prepare-tfds` output directory (data.source = "tfds")
            seed=0,
            inference_templates=False,  # every round as the inference prompt (sampling.SamplingConfig)
        )
    )
    c.train = ConfigDict(
        dict(
            steps=30 * 100,  # epochs x steps_per_epoch (scripts/train_glus_s.sh)
            batch_size=2,  # per device, as --batch_size
            grad_accum=10,
            lr=3e-4,
            warmup_steps=100,
            beta1=0.9,
            beta2=0.95,
            weight_decay=0.0,
            ce_weight=1.0,
            bce_weight=2.0,
            dice_weight=0.5,
            word_weight=0.0,  # not GLUS: the expression-word loss (train.forward.LossOptions.word_weight)
            contrastive=True,
            contrastive_weight=0.1,
            contrastive_tau=0.07,
            bank_size=512,
            num_negatives=128,
            lora_rank=8,
            lora_alpha=16,
            lora_dropout=0.05,
            lora_targets=("q_proj", "v_proj"),
            # Parameters trained besides LoRA: paths containing one of these names (train_ds.py).
            trainable=("lm_head", "embed_tokens", "sam_mask_decoder", "text_hidden_fcs", "mm_projector"),
            grad_clip=1.0,  # DeepSpeed gradient_clipping
            dropout=True,  # LoRA and memory-attention dropout (model.train())
            async_checkpoints=True,
            mem_stride=1,
            image_grad=False,  # gradients into SAM2's image encoder and memory path (GLUS: no_grad)
            ce_trains_llm=True,  # the [SEG] CE trains the LLM below lm_head (ForwardOptions.ce_trains_llm)
            seed=0,
            log_every=10,
            ckpt_every=500,  # 0 = only at the end of a run
            keep_checkpoints=3,
        )
    )
    c.inference = ConfigDict(dict(context_frames=4, question_frames=4, mem_stride=3))
    # Mesh over (data, fsdp, tensor); -1 fills with the remaining devices.
    # rules: ((logical axis, mesh axes), ...) replacing glus_jax.sharding.DEFAULT_RULES; () = the defaults.
    c.mesh = ConfigDict(dict(shape=(1, -1, 1), rules=()))
    return c
