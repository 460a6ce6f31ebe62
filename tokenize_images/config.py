"""Stage 2 configuration: encode_tokens, the text tokenizer, and (train_dvae.py) dVAE training.

Loaded from configs/*.toml and overridden on the command line (common/config.py):
    python orchestration/encode_tokens.py --dataset D --dvae ckpt.pt --output T --run.batch_size 128
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from common.config import doc
from harness.config import HarnessConfig


# Formatting is off below: a field and its documentation are aligned by hand, one field per line or two.
# fmt: off
@dataclass
class TokenizerConfig:
    vocab_size: int = doc(16384, "BPE vocabulary size (paper: 16,384).")
    min_frequency: int = doc(2, "A merge must occur at least this often in the captions.")
    dropout: float = doc(0.1, "BPE dropout the prior applies at training time (load_text_tokenizer(dropout=...)). "
                              "tokenizer.json is saved WITHOUT dropout, so evaluation is deterministic.")
    special_tokens: list[str] = doc([], "Extra special tokens to reserve (the prior pads per position itself).")
    train_if_missing: bool = doc(False, "encode_tokens: train tokenizer.json on a sample of sample_captions captions "
                                        "when the output root has none (it says so, and how big). Off: encode_tokens "
                                        "refuses to start without it; train it first with "
                                        "orchestration/train_tokenizer.py, its own step.")
    sample_captions: int = doc(10_000_000, "Captions the BPE trains on: read from the dataset shards in a fixed "
                                           "shuffled order until this many (0 = every caption). A 10-20M sample gives "
                                           "the merges of the whole set at a fraction of the time.")


@dataclass
class EncodeRunConfig:
    batch_size: int = doc(64, "Images per encoder forward pass (per actor).")
    read_batch_rows: int = doc(128, "Rows per block read from a dataset shard and decoded (a 256 px row is 192 KiB of "
                                    "pixels, so 128 rows make 24 MiB blocks).")
    device: Literal["auto", "cuda", "cpu"] = doc("auto", "'cuda' (waits up to gpu_wait_s for min_gpus GPUs, never "
                                                         "falls back to CPU), 'cpu', or 'auto' (GPU actors if the "
                                                         "cluster has GPUs at start-up: on an autoscaling cluster use "
                                                         "'cuda').")
    min_gpus: int = doc(1, "device 'cuda': GPUs the cluster must have before encoding starts.")
    gpu_wait_s: float = doc(900.0, "device 'cuda': how long to wait for min_gpus (autoscaled nodes start).")
    num_encoders: int = doc(0, "Encoder actors (0 = one per GPU, or on CPU: cluster CPUs minus reserve_cpus).")
    cpus_per_encoder: float = doc(1.0, "CPUs per CPU encoder actor (also its torch threads: see threads_per_encoder).")
    threads_per_encoder: int = doc(0, "torch threads per CPU encoder actor (0 = cpus_per_encoder, at least 1). More "
                                      "than its CPUs where the readers leave CPU idle, as in the demo's tiny images.")
    cpus_per_shard_task: float = doc(1.0, "CPUs per shard worker (an actor that reads, decodes and writes shards; "
                                          "one per such slot the encoders leave).")
    shards_in_flight: int = doc(0, "Shards in flight on the shard workers at once (0 = one per worker, plus one per "
                                   "encoder actor). Each holds one shard's tokens and captions and at most 2 pixel "
                                   "batches.")
    reserve_cpus: float = doc(1.0, "CPUs kept free of encoder actors for reading, decoding and writing: an actor pool "
                                   "that takes every CPU starves the read tasks and hangs.")
    encoder_memory_mb: int = doc(1024, "Host memory Ray reserves per encoder actor (must be > 0: it also keeps Ray "
                                       "Data from fusing the decode tasks into the actors).")
    # The keys of encoder_actor.AMP_DTYPES and preprocess.FILTERS (tests/test_config_choices.py checks).
    amp_dtype: Literal["auto", "bfloat16", "float16", "float32"] = doc("auto", "Autocast dtype of the encoder trunk "
                                                                               "(the output conv is always fp32): "
                                                                               "'auto' = float16 on GPU, float32 on "
                                                                               "CPU; an explicit dtype applies on CPU "
                                                                               "too. Token agreement with fp32: "
                                                                               "docs/tokens.md.")
    min_token_agreement: float = doc(0.999, "Under autocast each encoder actor also encodes its first "
                                            "token_check_tokens tokens in fp32 (and writes those); below this share "
                                            "of identical tokens the job fails with the figure.")
    token_check_tokens: int = doc(65536, "Tokens compared per actor before the verdict (64 openai images): 0.1% of "
                                         "fewer would be noise.")
    compile: bool = doc(False, "torch.compile the encoder trunk (fixed batch shapes; worth it on GPU).")
    null_encoder: bool = doc(False, "Bench only: zero tokens without a model (the pipeline's own ceiling).")
    channels_last: bool = doc(True, "GPU: channels_last memory format (faster convolutions on tensor cores).")
    resample: Literal["lanczos", "bicubic", "bilinear", "box"] = doc("lanczos", "Pillow filter for the short-side "
                                                                                "resize: lanczos, bicubic, bilinear, "
                                                                                "box.")
    grid_images: int = doc(8, "Originals and reconstructions in the MLflow grid.")
    ray_address: str = doc("", "Ray cluster to connect to ('' = RAY_ADDRESS, else a private local instance).")
    num_cpus: int = doc(0, "CPUs for a private local Ray instance (0 = all).")
    experiment: str = doc("encode_tokens", "MLflow experiment name.")
    mlflow: bool = doc(True, "Log the run to MLflow.")

    def __post_init__(self):
        if self.threads_per_encoder < 0:
            n = self.threads_per_encoder
            raise ValueError(f"run.threads_per_encoder must be >= 0 (0 = cpus_per_encoder), got {n}")


@dataclass
class EncodeConfig:
    dataset: str = doc("", "Dataset root written by build_dataset (shards/*.parquet, manifest.json).")
    dvae: str = doc("", "dVAE checkpoint (this project's format: train_dvae.py or import_openai_dvae.py).")
    output: str = doc("", "Tokens root: shards/*.parquet, rejected/*.parquet, tokenizer.json, manifest.json.")
    run: EncodeRunConfig = doc(EncodeRunConfig, "Execution options.")
    tokenizer: TokenizerConfig = doc(TokenizerConfig, "Text tokenizer options.")


@dataclass
class TrainTokenizerConfig:
    dataset: str = doc("", "Dataset root whose shard captions train the BPE.")
    output: str = doc("", "Where to write tokenizer.json (a file path, or a tokens root directory).")
    tokenizer: TokenizerConfig = doc(TokenizerConfig, "Tokenizer options.")


# --- dVAE training (tokenize_images/train_dvae.py) -------------------------------------------------


@dataclass
class DVAEModelConfig:
    preset: Literal["openai", "small"] = doc("small", "Architecture preset: 'openai' (n_hid 256, 2 blocks, 8192 "
                                                      "codes, 256 px) or 'small'. See tokenize_images/dvae.py.")
    n_hid: int = doc(0, "Override the preset's n_hid (0 = keep).")
    n_blk_per_group: int = doc(0, "Override the preset's resblocks per group (0 = keep).")
    vocab_size: int = doc(0, "Override the preset's codebook size (0 = keep).")
    image_size: int = doc(0, "Override the preset's image size, a multiple of `downsample` (0 = keep).")
    downsample: Literal[0, 4, 8] = doc(0, "Override the preset's pixels per token side (0 = keep; dall_e: 8). 4 "
                                          "gives a 16x16 grid at 64 px (tokenize_images/dvae.py).")


@dataclass
class ScheduleConfig:
    beta_max: float = doc(6.6, "KL weight reached at the end of its warm-up (paper: 6.6).")
    beta_steps: int = doc(5_000, "Cosine warm-up of beta from 0, in updates (paper: 5,000).")
    tau_start: float = doc(1.0, "Gumbel-softmax temperature at step 0 (paper: 1).")
    tau_end: float = doc(1 / 16, "Final temperature (paper: 1/16).")
    tau_steps: int = doc(150_000, "Cosine anneal of tau, in updates (paper: 150,000).")
    lr_start: float = doc(1e-4, "Initial learning rate (paper: 1e-4).")
    lr_end: float = doc(1.25e-6, "Final learning rate (paper: 1.25e-6).")
    lr_steps: int = doc(1_200_000, "Cosine decay of the learning rate, in updates (paper: 1.2M).")
    scale: float = doc(1.0, "Multiplies beta_steps, tau_steps and lr_steps: shrink the paper's schedules for short "
                            "runs (e.g. 0.001 for a 1,200-update run).")


@dataclass
class DVAEOptimConfig:
    batch_size: int = doc(32, "Images per worker per update.")
    max_steps: int = doc(1000, "Updates to train for (a rerun with a larger value continues).")
    betas: list[float] = doc([0.9, 0.999], "AdamW betas (paper).")
    eps: float = doc(1e-8, "AdamW epsilon (paper).")
    weight_decay: float = doc(1e-4, "AdamW weight decay (paper).")
    ema_decay: float = doc(0.999, "Parameter EMA decay (paper); the exported checkpoint holds the EMA weights.")
    grad_clip: float = doc(0.0, "Clip the gradient norm to this (0 = off; the paper does not clip).")
    seed: int = doc(0, "Seed of initialisation and Gumbel noise (per worker: seed + rank).")


@dataclass
class CodebookConfig:
    """Aids for short runs against codebook collapse (tokenize_images/codebook_init.py); none is in the paper,
    so all are off by default. configs/dvae_demo.toml turns them on: without them a 300-update CPU run maps
    every foreground colour to one grey code (docs/tokens.md)."""

    kmeans_margin: float = doc(0.0, "k-means codebook init of the encoder's output conv from the first images, with "
                                    "this median logit margin between the nearest two codes (0 = off).")
    kmeans_images: int = doc(256, "Images whose encoder features the k-means init clusters (on each worker; DDP then "
                                  "starts every rank from rank 0's weights).")
    encoder_frozen_steps: int = doc(0, "Updates at the start during which the encoder's learning rate is 0, so the "
                                       "decoder learns what the initial codes mean before they can move.")
    code_embedding_lr_mult: float = doc(1.0, "Learning-rate multiplier of the decoder's input 1x1 conv, the table of "
                                             "code embeddings: each column is trained only by the positions that pick "
                                             "its code, so under Adam it moves ~sqrt(usage) as fast as the dense "
                                             "weights.")
    teacher_steps: int = doc(0, "Updates at the start in which the dVAE learns a k-means codebook of raw pixel "
                                "patches (tokenize_images/patch_teacher.py, fitted on `kmeans_images` images): the "
                                "encoder by cross-entropy towards each patch's nearest centre, the decoder by "
                                "drawing those codes (teacher_reconstruction); the paper's ELBO after (0 = off). An "
                                "alternative to kmeans_margin, not an addition.")
    teacher_reconstruction: Literal["mse", "logit_laplace"] = doc(
        "mse", "The decoder's loss in the taught updates: 'mse' of its mean (sigmoid(mu)) or the paper's "
               "'logit_laplace' NLL. Measured on the demo's scenes after 400 updates: 78.9% fully right at 28.4 dB "
               "against 53.5% at 24.4 dB (docs/tokens.md).")

    def __post_init__(self):
        if self.teacher_steps < 0:
            raise ValueError(f"codebook.teacher_steps must be >= 0, got {self.teacher_steps}")
        if self.teacher_steps and self.kmeans_margin:
            raise ValueError(
                "codebook.teacher_steps and codebook.kmeans_margin are alternative codebook inits: set one of them "
                f"(got teacher_steps={self.teacher_steps}, kmeans_margin={self.kmeans_margin})"
            )


@dataclass
class DVAETrainConfig:
    dataset: str = doc("", "Dataset root (build_dataset output) whose images train the dVAE.")
    output: str = doc("", "Where to export the trained dVAE (EMA weights, this project's checkpoint format).")
    reuse: bool = doc(False, "If `output` already exists, keep it and skip training (the demo's cache).")
    random_crop: bool = doc(True, "Train on random square crops of the short-side-resized image (paper), the "
                                  "offset seeded by (optim.seed, epoch, key); encode_tokens always takes the centre.")
    cache_decoded: bool = doc(False, "Decode the images once and keep the pixels in each worker's memory across "
                                     "epochs (small datasets such as the demo's; centre crops). Off: every epoch "
                                     "streams, reads and decodes again, with fresh random crops.")
    shuffle_buffer: int = doc(1024, "Rows in each worker's local shuffle buffer (0 = stream order; with cache_decoded "
                                    "every epoch would then repeat the same batches).")
    horizontal_flip: bool = doc(True, "Flip each training image left-right with probability 1/2 (paper, Listing 1).")
    train_crop: int = doc(0, "Train on one random train_crop x train_crop window of each batch (its corner on the "
                             "token grid; 0 = the whole image). With a batch train_crop^2 / S^2 times larger an update "
                             "costs the same but sees more images: on the demo's scenes 32 px windows of 64 images "
                             "learnt the patch teacher's codes faster than 16 whole images (docs/tokens.md).")
    shuffle_files: bool = doc(True, "Read the dataset shards in a new order every epoch, a permutation seeded by "
                                    "(optim.seed, epoch), so batches mix shards and sources instead of repeating one "
                                    "file order with a 1,024-row local shuffle; a resume rebuilds the same order "
                                    "(tokenize_images/dvae_data.py).")
    activation_checkpointing: bool = doc(False, "Recompute each resblock group's activations in the backward pass "
                                                "instead of keeping them: saved activations drop to the group "
                                                "boundaries (configs/dvae_openai.toml has the arithmetic).")
    channels_last: bool = doc(True, "GPU: model and batches in channels_last (faster convolutions on tensor cores).")
    trace_batches: str = doc("", "Debug: append each rank's batch keys per step to this JSONL file (data lineage).")
    checkpoint_every: int = doc(200, "Report a Ray Train checkpoint every N updates (and at the end).")
    image_every: int = doc(200, "Log an originals / reconstructions grid to MLflow every N updates.")
    model: DVAEModelConfig = doc(DVAEModelConfig, "Architecture.")
    schedule: ScheduleConfig = doc(ScheduleConfig, "beta, tau and learning-rate schedules (all cosine).")
    optim: DVAEOptimConfig = doc(DVAEOptimConfig, "Optimiser.")
    codebook: CodebookConfig = doc(CodebookConfig, "Short-run aids against codebook collapse (off = the paper).")
    run: HarnessConfig = doc(HarnessConfig, "Ray Train harness settings (harness/config.py), shared with the prior.")
