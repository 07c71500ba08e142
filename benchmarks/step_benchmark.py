"""Step time, throughput and peak memory of a DPO step, against a plain SFT step on the same tokens.

    python benchmarks/step_benchmark.py --model toy --pairs 16 --prompt-len 16 --completion-len 32
    python benchmarks/step_benchmark.py --model vocab152k --pairs 4 --prompt-len 128 --completion-len 384 \\
        --modes sft dpo_full_logits dpo_online
    python benchmarks/step_benchmark.py --model qwen2.5-0.5b --device cuda --dtype bfloat16 \\
        --pairs 4 --prompt-len 256 --completion-len 768      # on a GPU
    python benchmarks/step_benchmark.py --model small --pairs 16 --prompt-len 600 \\
        --completion-len 200 --ragged --modes dpo_online dpo_packed --attention flex \\
        --row-tokens 4096                  # packed rows under a block-sparse mask

Modes (each measured in a fresh process, so peak memory is its own):
  sft              plain PyTorch SFT step on the same 2·pairs sequences (full logits, HF loss): the floor
  dpo_online       prefopt DPO step, reference model run every step
  dpo_cached       prefopt DPO step, reference log-probs precomputed (as with reference.cache=true)
  dpo_full_logits  prefopt DPO step with online reference but full [batch, seq, vocab] logits
  dpo_shared       dpo_online with model.prefix_sharing=true: prompt | chosen | rejected, one row
  dpo_padfree      dpo_online with data.packing=true only: sequences end to end in rows
  dpo_packed       dpo_shared with data.packing=true: shared pairs end to end in rows
  trl              TRL's DPOTrainer on the same model and tokens, online reference
  trl_precomputed  TRL's DPOTrainer with `precompute_ref_log_probs=True`
                   (both only when `trl` is installed: pip install -e ".[bench]")

`--attention` (sdpa, flex, flash_varlen) is `model.attention` for the prefopt modes and
`--row-tokens` is `data.packing_row_tokens`; each prefopt mode also reports how far its
policy log-probs are from the standard padded path's (`max_logp_diff`, and relative to the
sequence's summed log-prob `max_logp_rel_diff`; no gradient).

Models are random-initialised from a config (no download): `toy` (the toy world's shape),
`vocab152k` (Qwen2.5's 151,936-token vocabulary on a tiny body: isolates the logits' cost) and
`qwen2.5-0.5b` (the real shape). Peak memory is CUDA max-allocated on GPU, the process's peak
RSS on CPU. Prints one table and writes JSON (`--json`).

`--compile` and `--liger` switch on `model.compile` and `model.liger_kernel` for the sft and
prefopt modes (TRL's modes stay as TRL runs them: the baseline).
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

MODES = (
    "sft",
    "dpo_online",
    "dpo_cached",
    "dpo_full_logits",
    "dpo_shared",
    "dpo_padfree",
    "dpo_packed",
    "trl",
    "trl_precomputed",
)
EOS_ID = 2
"""Every completion ends with this id (so TRL, which appends EOS, sees the same tokens)."""
PAD_ID = 1

SHAPES = {
    "toy": dict(
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=320,
    ),
    "small": dict(  # a small model whose step is not dominated by Python overhead on CPU
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=8000,
    ),
    "vocab152k": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=151936,
    ),
    "qwen2.5-0.5b": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
    ),
}


def build_model(name: str, max_len: int, dtype: torch.dtype, seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        **SHAPES[name], max_position_embeddings=max(max_len, 32), tie_word_embeddings=True
    )
    return Qwen2ForCausalLM(config).to(dtype)


def make_batch(args, vocab_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Chosen rows then rejected rows (`collate_pairs`' layout): per pair a random prompt shared
    by both, two different random completions ending in EOS. Lengths are `--prompt-len` and
    `--completion-len`, or with `--ragged` drawn around them as in real data (prompt 0.5-1.5x,
    each completion 0.25-1.75x), so a batch pads as real batches do."""
    from prefopt.data.collate import collate_pairs

    g = torch.Generator().manual_seed(1)

    def length(mean: int, low: float, high: float) -> int:
        if not args.ragged:
            return mean
        return max(1, round(mean * (low + (high - low) * torch.rand((), generator=g).item())))

    def tokens(n: int) -> list[int]:
        return torch.randint(3, vocab_size, (n,), generator=g).tolist()

    pairs = []
    for _ in range(args.pairs):
        prompt = tokens(length(args.prompt_len, 0.5, 1.5))
        chosen = tokens(length(args.completion_len, 0.25, 1.75) - 1) + [EOS_ID]
        rejected = tokens(length(args.completion_len, 0.25, 1.75) - 1) + [EOS_ID]
        pairs.append(
            {
                "chosen_input_ids": prompt + chosen,
                "chosen_prompt_length": len(prompt),
                "rejected_input_ids": prompt + rejected,
                "rejected_prompt_length": len(prompt),
                "index": len(pairs),
            }
        )
    batch = collate_pairs(pairs, pad_token_id=PAD_ID)
    return {k: v.to(device) for k, v in batch.items()}


def max_length(args) -> int:
    return round(
        (1.5 * args.prompt_len + 1.75 * args.completion_len)
        if args.ragged
        else (args.prompt_len + args.completion_len)
    )


def run_worker(args) -> dict:
    """Measure one mode in this process."""
    from prefopt.config.schema import OptimConfig
    from prefopt.losses import DPOLoss
    from prefopt.model.attention import implementation
    from prefopt.model.logprobs import DEFAULT_CHUNK_SIZE, completion_logps
    from prefopt.model.packing import PairPacking
    from prefopt.reference.cached import CachedReference
    from prefopt.reference.online import OnlineReference
    from prefopt.training.module import PreferenceModule

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    seq_len = max_length(args)
    policy = build_model(args.model, seq_len, dtype).to(device)
    standard_policy = None
    if args.mode.startswith("dpo"):
        standard_policy = copy.deepcopy(policy)  # the standard path's log-probs, for the check
        policy.set_attn_implementation(implementation(args.attention))
    batch = make_batch(args, policy.config.vocab_size, device)
    tokens = int(batch["attention_mask"].sum())  # real tokens: padding is not throughput

    if args.mode.startswith("trl"):
        return run_trl(args, policy, batch)

    policy = with_speedups(policy, args, is_policy=True)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-5)
    model_tokens = max_logp_diff = max_logp_rel_diff = None
    if args.mode == "sft":
        labels = batch["input_ids"].masked_fill(~batch["completion_mask"], -100)

        def step():
            policy(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels
            ).loss.backward()
    else:
        chunk = None if args.mode == "dpo_full_logits" else args.chunk_size or DEFAULT_CHUNK_SIZE
        packing = PairPacking(
            "true" if args.mode in ("dpo_shared", "dpo_packed") else "false",
            padding_free=args.mode in ("dpo_padfree", "dpo_packed"),
            row_tokens=args.row_tokens or None,
        )
        reference_model = build_model(args.model, seq_len, dtype).to(device)
        reference_model.set_attn_implementation(implementation(args.attention))
        if args.mode == "dpo_cached":
            with torch.no_grad():
                first, second = completion_logps(reference_model, batch, chunk).split(args.pairs)
            reference = CachedReference(
                {"train": torch.stack([first.summed, second.summed], 1).float().cpu()}
            )
            del reference_model  # as on a cache hit: no reference model in memory
        else:
            reference_model = with_speedups(reference_model, args, is_policy=False)
            reference = OnlineReference(reference_model, chunk, packing)
        module = PreferenceModule(
            policy,
            DPOLoss(beta=0.1),
            OptimConfig(lr=1e-5),
            reference=reference,
            chunk_size=chunk,
            packing=packing,
        )
        if packing.requested:
            model_tokens = packing.layout(batch, policy)["input_ids"].numel()
        with torch.no_grad():
            expected = completion_logps(standard_policy, batch, chunk).summed
            got = packing.logps(policy, batch, chunk).summed
        max_logp_diff = float((got - expected).abs().max())
        # fp32 sums of ~1,000 log-probs round at ~1e-4 absolute: the relative distance is the
        # one a 1e-5 tolerance applies to.
        max_logp_rel_diff = float(((got - expected).abs() / expected.abs().clamp(min=1)).max())
        del standard_policy

        def step():
            module.compute_loss(batch).loss.backward()

    times = []
    for i in range(args.warmup + args.steps):
        sync(device)
        start = time.perf_counter()
        step()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "mode": args.mode,
        "attention": args.attention if args.mode != "sft" else "default",
        "max_logp_diff": max_logp_diff,
        "max_logp_rel_diff": max_logp_rel_diff,
        "median_step_s": median,
        "tokens_per_s": tokens / median,
        "pairs_per_s": args.pairs / median,
        # Token slots through the policy per pair, padding included.
        "model_tokens_per_pair": (model_tokens or batch["input_ids"].numel()) / args.pairs,
        "peak_memory_mb": peak_memory_mb(device),
    }


def with_speedups(model: torch.nn.Module, args, is_policy: bool) -> torch.nn.Module:
    """`--liger` and `--compile` as `model.liger_kernel` (policy and reference) and
    `model.compile` (the policy's decoder layers) apply them; TRL's modes run without."""
    if args.liger:
        from prefopt.model.liger import apply_liger_kernels

        apply_liger_kernels(model)
    if args.compile and is_policy:
        from prefopt.config.schema import ModelConfig
        from prefopt.model.loading import prepare_policy

        model = prepare_policy(model, ModelConfig(path="benchmark", compile=True))
    return model


def run_trl(args, policy, batch) -> dict:
    """TRL's DPOTrainer, fed the very token ids of `batch` through a word-level tokenizer whose
    token `t<i>` is id i, so its own tokenization path yields the same sequences."""
    try:
        import trl
        from datasets import Dataset
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast, TrainerCallback
    except ImportError:
        return {"mode": args.mode, "skipped": "trl is not installed (pip install -e '.[bench]')"}

    # Special tokens get names no other token contains (the tokenizer would split them out).
    names = [f"t{i}" for i in range(policy.config.vocab_size)]
    names[0], names[1], names[EOS_ID] = "<unk>", "<pad>", "<eos>"
    word_level = Tokenizer(models.WordLevel({n: i for i, n in enumerate(names)}, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_level, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>"
    )

    def text(ids) -> str:
        return " ".join(names[i] for i in ids.tolist())

    ids, lengths = batch["input_ids"].cpu(), batch["attention_mask"].sum(-1).tolist()
    prompt_lengths = batch["completion_mask"].int().argmax(-1).tolist()
    rows = [
        {
            "prompt": text(ids[i, : prompt_lengths[i]]),
            "chosen": " " + text(ids[i, prompt_lengths[i] : lengths[i]]),
            "rejected": " "
            + text(ids[args.pairs + i, prompt_lengths[i] : lengths[args.pairs + i]]),
        }
        for i in range(args.pairs)
    ]
    steps = args.warmup + args.steps
    dataset = Dataset.from_list(rows * steps)  # the same pairs every step, as in the other modes

    times: list[float] = []
    device = torch.device(args.device)

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            sync(device)
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__):
            sync(device)
            times.append(time.perf_counter() - self.start)

    precompute = args.mode == "trl_precomputed"
    config = trl.DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-bench-"),
        per_device_train_batch_size=args.pairs,
        max_steps=steps,
        learning_rate=1e-5,
        beta=0.1,
        max_length=max_length(args),
        precompute_ref_log_probs=precompute,
        bf16=args.dtype == "bfloat16",
        use_cpu=device.type == "cpu",
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_drop_last=True,
        seed=0,
    )
    # With precomputed log-probs TRL scores the data with the policy itself before training
    # (it equals the reference then), so it needs no reference model.
    reference = None if precompute else build_model(args.model, config.max_length, policy.dtype)
    trainer = trl.DPOTrainer(
        model=policy,
        ref_model=reference.to(device) if reference is not None else None,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[StepTimer()],
    )
    first = trainer.train_dataset[0]
    same_tokens = (
        first["prompt_ids"] + first["chosen_ids"] == ids[0, : lengths[0]].tolist()
    )  # TRL saw exactly our sequences
    trainer.train()
    median = statistics.median(times[args.warmup :])
    return {
        "mode": args.mode,
        "median_step_s": median,
        "tokens_per_s": int(batch["attention_mask"].sum()) / median,
        "pairs_per_s": args.pairs / median,
        # TRL pads chosen and rejected to the batch's longest sequence, as the standard layout.
        "model_tokens_per_pair": batch["input_ids"].numel() / args.pairs,
        "peak_memory_mb": peak_memory_mb(device),
        "trl_version": trl.__version__,
        "same_tokens": same_tokens,
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def progress(result: dict) -> str:
    """One worker's result in a few words (the table comes once every round is done)."""
    if "skipped" in result:
        return "skipped"
    return f"{1000 * result['median_step_s']:.1f} ms/step, peak {result['peak_memory_mb']:.0f} MB"


def combine_rounds(rounds: list[dict]) -> dict:
    if "skipped" in rounds[0]:
        return rounds[0]
    median = statistics.median(r["median_step_s"] for r in rounds)
    return {
        "mode": rounds[0]["mode"],
        "attention": rounds[0].get("attention"),
        "max_logp_diff": rounds[0].get("max_logp_diff"),
        "max_logp_rel_diff": rounds[0].get("max_logp_rel_diff"),
        "median_step_s": median,
        "tokens_per_s": rounds[0]["tokens_per_s"] * rounds[0]["median_step_s"] / median,
        "pairs_per_s": rounds[0]["pairs_per_s"] * rounds[0]["median_step_s"] / median,
        "model_tokens_per_pair": rounds[0]["model_tokens_per_pair"],
        "peak_memory_mb": max(r["peak_memory_mb"] for r in rounds),
        "rounds": rounds,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=sorted(SHAPES), default="toy")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--completion-len", type=int, default=32)
    parser.add_argument(
        "--ragged", action="store_true", help="lengths drawn around the means, as in real data"
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds of fresh processes per mode (median taken)"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="CPU threads per worker (0: torch's default)"
    )
    parser.add_argument(
        "--chunk-size", type=int, default=0, help="model.logits_chunk_size (0: prefopt's default)"
    )
    parser.add_argument(
        "--compile", action="store_true", help="model.compile=true for the sft and prefopt modes"
    )
    parser.add_argument(
        "--liger",
        action="store_true",
        help="model.liger_kernel=true for the sft and prefopt modes (liger-kernel, CUDA)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument(
        "--modes", nargs="+", choices=MODES, default=["sft", "dpo_online", "dpo_cached"]
    )
    parser.add_argument(
        "--attention",
        choices=("sdpa", "flex", "flash_varlen"),
        default="sdpa",
        help="model.attention of the prefopt modes",
    )
    parser.add_argument(
        "--row-tokens",
        type=int,
        default=0,
        help="data.packing_row_tokens of the packed modes (0: rows as long as the longest block)",
    )
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--worker", dest="mode", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    if args.mode:
        print(json.dumps(run_worker(args)))
        return

    # Rounds of fresh processes, modes interleaved, so a noisy neighbour on the machine slows
    # every mode alike; each mode reports the median over rounds of its median step time.
    runs: dict[str, list[dict]] = {mode: [] for mode in args.modes}
    for round_ in range(1, args.repeats + 1):
        for mode in args.modes:
            cmd = [sys.executable, __file__, *sys.argv[1:], "--worker", mode]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            runs[mode].append(json.loads(out.strip().splitlines()[-1]))
            print(
                f"round {round_}/{args.repeats} {mode}: {progress(runs[mode][-1])}", file=sys.stderr
            )
    results = [combine_rounds(rounds) for rounds in runs.values()]

    floor = next((r for r in results if r["mode"] == "sft" and "median_step_s" in r), None)
    print(
        f"\nmodel={args.model} pairs={args.pairs} prompt={args.prompt_len} completion={args.completion_len} "
        f"ragged={args.ragged} "
        f"device={args.device} dtype={args.dtype} threads={args.threads or torch.get_num_threads()} "
        f"attention={args.attention} row_tokens={args.row_tokens or None}"
    )
    print(
        f"{'mode':<17} {'step ms':>9} {'× sft':>7} {'tokens/s':>10} {'pairs/s':>8} "
        f"{'model tokens/pair':>18} {'peak MB':>9} {'max |Δlogp|':>12} {'relative':>9}"
    )
    for r in results:
        if "skipped" in r:
            print(f"{r['mode']:<17} skipped: {r['skipped']}")
            continue
        ratio = r["median_step_s"] / floor["median_step_s"] if floor else float("nan")
        print(
            f"{r['mode']:<17} {1000 * r['median_step_s']:9.1f} {ratio:7.2f} {r['tokens_per_s']:10.0f} "
            f"{r['pairs_per_s']:8.2f} {r['model_tokens_per_pair']:18.0f} {r['peak_memory_mb']:9.0f} "
            f"{'' if r.get('max_logp_diff') is None else format(r['max_logp_diff'], '12.1e')} "
            f"{'' if r.get('max_logp_rel_diff') is None else format(r['max_logp_rel_diff'], '9.1e')}"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
