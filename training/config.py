"""train_prior configuration: every field, its default, and why (paper appendix B.2 defaults).

python training/train_prior.py --config configs/prior_demo.toml --optim.lr 3e-4 --run.num_workers 4
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from common.config import doc
from harness import HarnessConfig


# Formatting is off below: a field and its documentation are aligned by hand, one field per line or two.
# fmt: off
@dataclass
class ModelConfig:
    # The names of training/presets.PRESETS (tests/test_config_choices.py keeps the two equal).
    preset: Literal["tiny", "demo", "1b", "12b"] = doc("tiny", "Shape preset: tiny (tests), demo (CPU demo), 1b (GPU "
                                                               "MFU bench), 12b (the paper's). See "
                                                               "training/presets.py.")
    n_layer: int = doc(0, "Override the preset's layer count (0 = keep).")
    n_head: int = doc(0, "Override the preset's head count (0 = keep).")
    head_dim: int = doc(0, "Override the preset's head width (0 = keep).")
    text_len: int = doc(0, "Override the text length in BPE tokens (0 = keep; paper: 256).")
    attention: Literal["sparse", "full"] = doc("sparse", "'sparse' = the paper's row/column/conv layer pattern; "
                                                         "'full' = causal everywhere.")
    attn_impl: Literal["auto", "sdpa", "flex"] = doc("auto", "'auto' = flex on GPU clusters, sdpa otherwise; 'sdpa' = "
                                                             "scaled_dot_product_attention with boolean masks cached "
                                                             "once per shape (works everywhere, but a mask rules out "
                                                             "FlashAttention: every score is computed); 'flex' = "
                                                             "FlexAttention block masks that skip masked blocks, "
                                                             "column layers on transposed image states (GPU only: "
                                                             "torch has no FlexAttention backward on CPU).")
    compile: Literal["auto", "true", "false"] = doc("auto", "torch.compile the training forward: 'auto' = on CUDA "
                                                            "devices (FlexAttention is slow uncompiled).")
    conv_kernel: int = doc(0, "Override the conv attention window K (0 = keep; paper: 11).")
    dropout: float = doc(0.0, "Residual/attention dropout (the paper uses none).")


@dataclass
class DataConfig:
    tokens: str = doc("", "Token root of stage 2 (local or s3://): manifest.json, tokenizer.json, shards/*.parquet.")
    val_shards: int = doc(1, "Held-out validation shards: the last N shards (by name) are never trained on.")
    batch_size: int = doc(8, "Micro-batch per worker (sequences).")
    bpe_dropout: float = doc(0.1, "BPE dropout at training time (paper: 10%); validation uses none.")
    shuffle_buffer: int = doc(256, "Rows in each worker's local shuffle buffer (0 = stream order).")
    seed: int = doc(0, "Seed of the shuffle (the epoch number is added, so epochs differ but reruns agree).")
    prefetch_batches: int = doc(2, "Batches Ray Data prepares ahead of the training step.")
    cache: Literal["stream", "memory"] = doc("stream", "'stream' = every epoch reads the shards again (any size); "
                                                       "'memory' = read them once into Ray's object store and iterate "
                                                       "that every epoch, for token sets of many short epochs (the "
                                                       "demo's: a read costs 3-5 CPU-seconds per epoch). Refused when "
                                                       "the shards would take over half the object store.")


@dataclass
class OptimConfig:
    lr: float = doc(4.5e-4, "Peak learning rate (paper: 4.5e-4).")
    warmup_steps: int = doc(5000, "Linear warmup from 0 to lr over this many updates (paper: 5000).")
    beta1: float = doc(0.9, "AdamW beta1.")
    beta2: float = doc(0.96, "AdamW beta2 (paper: 0.96).")
    eps: float = doc(1e-8, "AdamW epsilon.")
    weight_decay: float = doc(4.5e-2, "Decoupled weight decay, not applied to gains, biases or embeddings.")
    grad_clip: float = doc(4.0, "Gradient-norm clipping threshold (paper: 4).")
    plateau_patience: int = doc(2, "Windows of val_every updates without training-loss improvement (after warmup) "
                                   "before the lr is halved.")
    plateau_threshold: float = doc(1e-3, "Relative improvement of the window's training loss that counts as progress.")
    max_halvings: int = doc(5, "The lr is halved at most this many times (paper: 5).")
    ema_decay: float = doc(0.99, "Parameter EMA decay (paper: 0.99). Samples are drawn from the EMA model.")
    ema_every: int = doc(25, "Apply the EMA decay once every N updates (paper B.2: 25, a window of ~2,500 updates).")
    grad_accum: int = doc(1, "Micro-batches per optimiser update (gradient accumulation).")
    bf16: bool = doc(True, "bf16 autocast on GPU (ignored on CPU).")
    powersgd: bool = doc(False, "Compress DDP gradients with PowerSGD (powerSGD_hook; the batched variant is broken "
                                "in torch 2.13). Its error-feedback state is checkpointed.")
    powersgd_rank: int = doc(2, "PowerSGD matrix approximation rank.")
    powersgd_start_iter: int = doc(10, "Plain allreduce for this many iterations before compressing.")
    activation_checkpointing: bool = doc(False, "Recompute each block's activations in backward (large presets).")


@dataclass
class TrainConfig:
    max_steps: int = doc(1000, "Optimiser updates in total (a resumed run continues up to this).")
    val_every: int = doc(200, "Validate, and check the training loss for a plateau, every N updates.")
    val_batches: int = doc(8, "Batches per worker per validation (0 = the whole validation split).")
    checkpoint_every: int = doc(200, "Checkpoint every N updates (and always at the end).")
    sample_every: int = doc(500, "Log a PNG grid of samples every N updates (0 = only at the end).")
    sample_captions: list[str] = doc(["a red circle", "a blue square"], "Fixed captions sampled for the grids.")
    samples_per_caption: int = doc(4, "Images per caption in a grid.")
    sample_top_k: int = doc(0, "Top-k for the grids (0 = full distribution).")
    sample_temperature: float = doc(1.0, "Sampling temperature for the grids (1 = the model's distribution).")
    dvae: str = doc("", "dVAE checkpoint to decode sample tokens to pixels; '' = draw colour-coded token maps.")
    cpu_peak_flops: float = doc(0.0, "Peak FLOP/s of one CPU worker for the MFU estimate (0 = measure a matmul).")
    fail_at_step: int = doc(0, "Fault drill: kill the last worker once when it reaches this step (0 = never).")
    trace_batches: str = doc("", "Debug: append each rank's batch keys per step to this JSONL file (data lineage).")


@dataclass
class PriorTrainConfig:
    model: ModelConfig = doc(ModelConfig, "Model shape.")
    data: DataConfig = doc(DataConfig, "Token shards and batching.")
    optim: OptimConfig = doc(OptimConfig, "Optimiser, schedule and distributed options.")
    train: TrainConfig = doc(TrainConfig, "Loop lengths, validation, checkpoints, samples.")
    run: HarnessConfig = doc(HarnessConfig, "Ray Train and MLflow (shared harness settings).")
