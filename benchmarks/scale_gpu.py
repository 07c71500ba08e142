"""Memory and throughput of DPO steps on a Qwen2.5-0.5B-shaped model, with and without LoRA.

    python benchmarks/scale_gpu.py [--steps 20] [--batch 4] [--length 1024] [--tiny]

The model has Qwen2.5-0.5B's shape (24 layers, hidden 896, 14 query / 2 key-value heads,
MLP 4864, vocabulary 151,936, tied embeddings) with random weights, so nothing is downloaded.
Each setting trains `--steps` DPO steps of `--batch` pairs of `--length` tokens (half prompt,
half completion) with Lightning (bf16-mixed on a GPU), the reference run online: a frozen
copy for full fine-tuning, the adapter-disabled policy for LoRA (no second model). It prints
the peak accelerator memory and pairs/s and tokens/s over the steps after the first two.
`--tiny` shrinks the model and batch to check the script on a CPU in seconds.
"""

from __future__ import annotations

import argparse
import copy
import time

import lightning as L
import torch
from omegaconf import OmegaConf
from step_benchmark import SHAPES  # benchmarks/ is on sys.path when this script runs
from transformers import Qwen2Config, Qwen2ForCausalLM

from prefopt.losses.dpo import DPOLoss
from prefopt.model.lora import apply_lora
from prefopt.reference.adapter import AdapterDisabledReference
from prefopt.reference.online import OnlineReference
from prefopt.training.module import PreferenceModule


def qwen25_05b_shape(tiny: bool) -> Qwen2Config:
    if tiny:
        return Qwen2Config(
            vocab_size=1000,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        )
    # The real shape is the one the step benchmark uses: one definition for both scripts.
    return Qwen2Config(
        **SHAPES["qwen2.5-0.5b"], max_position_embeddings=32768, tie_word_embeddings=True
    )


class Batches(torch.utils.data.IterableDataset):
    def __init__(self, pairs: int, length: int, vocab: int):
        self.pairs, self.length, self.vocab = pairs, length, vocab

    def __iter__(self):
        generator = torch.Generator().manual_seed(0)
        while True:
            ids = torch.randint(3, self.vocab, (2 * self.pairs, self.length), generator=generator)
            ids[self.pairs :, : self.length // 2] = ids[: self.pairs, : self.length // 2]
            completion = torch.zeros_like(ids, dtype=torch.bool)
            completion[:, self.length // 2 :] = True
            yield {
                "input_ids": ids,
                "attention_mask": torch.ones_like(ids),
                "completion_mask": completion,
            }


class Throughput(L.Callback):
    def __init__(self, warmup: int = 2):
        self.warmup, self.start, self.steps = warmup, None, 0

    def on_train_batch_end(self, trainer, *args):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()
        elif trainer.global_step > self.warmup:
            self.steps = trainer.global_step - self.warmup


def run(lora: bool, args) -> dict[str, float]:
    torch.manual_seed(0)
    config = qwen25_05b_shape(args.tiny)
    base = Qwen2ForCausalLM(config)
    if args.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora:
        policy = apply_lora(
            base,
            OmegaConf.create(
                {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}
            ),
        )
        reference = AdapterDisabledReference(policy)
    else:
        policy, reference = (
            base,
            OnlineReference(copy.deepcopy(base).to(torch.bfloat16 if args.gpu else torch.float32)),
        )
    module = PreferenceModule(
        policy,
        DPOLoss(beta=0.1),
        OmegaConf.create(
            {
                "lr": 5e-6 if lora else 5e-7,
                "betas": [0.9, 0.999],
                "weight_decay": 0.0,
                "warmup_ratio": 0.0,
                "scheduler": "constant",
            }
        ),
        reference=reference,
    )
    data = torch.utils.data.DataLoader(
        Batches(args.batch, args.length, config.vocab_size), batch_size=None
    )
    clock = Throughput()
    trainer = L.Trainer(
        accelerator="gpu" if args.gpu else "cpu",
        devices=1,
        precision="bf16-mixed" if args.gpu else "32-true",
        max_steps=args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[clock],
    )
    if args.gpu:
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, train_dataloaders=data)
    seconds = time.perf_counter() - clock.start
    pairs = clock.steps * args.batch
    return {
        "trainable_params_M": sum(p.numel() for p in policy.parameters() if p.requires_grad) / 1e6,
        "peak_memory_GiB": torch.cuda.max_memory_allocated() / 2**30 if args.gpu else float("nan"),
        "pairs_per_s": pairs / seconds,
        "tokens_per_s": pairs * 2 * args.length / seconds,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4, help="pairs per step")
    parser.add_argument("--length", type=int, default=1024, help="tokens per sequence")
    parser.add_argument(
        "--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false"
    )
    parser.add_argument("--tiny", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.gpu = torch.cuda.is_available()
    if args.tiny:
        args.batch, args.length, args.steps = 2, 32, min(args.steps, 5)
    device = torch.cuda.get_device_name() if args.gpu else "CPU"
    print(
        f"{device}; {args.batch} pairs × {args.length} tokens, {args.steps} steps, "
        f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}"
    )
    for lora in (False, True):
        result = run(lora, args)
        print(
            ("LoRA r16 " if lora else "full     ")
            + "  ".join(f"{k}={v:.3g}" for k, v in result.items()),
            flush=True,
        )


if __name__ == "__main__":
    main()
