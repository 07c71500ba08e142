"""Build (or load from cache) the toy world: SFT reference model + reward-labelled pairs.

Like the IMDb experiment of the DPO paper in miniature: an SFT model is trained on generated
reviews, two completions per prompt are sampled from it, and the ground-truth reward
(`prefopt.toy.language.reward`) decides which one is chosen. Pairs whose rewards tie are
resampled a few times, then dropped.

Training labels are noisy the way the DPO derivation assumes human labels are: the
Bradley–Terry model p(a ≻ b) = σ((r_a − r_b)/τ), τ = `label_temperature`. With noisy labels the
DPO objective has a finite optimum, π/π_ref ∝ exp(r/(βτ)), so β visibly sets how far the policy
drifts (KL falls as β rises); with deterministic labels every β drives the margins to infinity
and β only sets the speed. Validation and test pairs are ordered by the true reward, so
validation accuracy measures agreement with the ground truth. Train, validation and test prompts are disjoint, and the
SFT model never sees a validation or test prompt.

A world lives in ``<cache root>/<hash of the config>``; it is built in a temporary sibling
directory, sealed (`prefopt.files.seal`: every file's size and hash, written last) and renamed
into place, so a killed build never leaves a half-written world behind, and a world damaged
later is recognised, moved aside and built again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from prefopt.config.schema import ToyWorldConfig
from prefopt.files import cache_root as prefopt_cache_root
from prefopt.files import file_lock, folder_bytes, reported_disk_full, seal, seal_problem, set_aside
from prefopt.model.sampling import checkpoint_generation_config_aside, sampling_config
from prefopt.toy.language import all_prompts, reward
from prefopt.toy.sft import build_model, sft_examples, train_sft
from prefopt.toy.tokenizer import build_tokenizer

log = logging.getLogger(__name__)

WORLD_VERSION = 4
"""Part of the cache key: bump it whenever the language, the model or the sampling changes."""

_SAMPLING_ATTEMPTS = 4
_SAMPLING_BATCH = 256
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ToyWorld:
    root: Path
    model_dir: Path
    train_path: Path
    val_path: Path
    test_path: Path

    @classmethod
    def at(cls, root: Path) -> ToyWorld:
        return cls(root, root / "model", *(root / f"{split}.jsonl" for split in SPLITS))


def cache_key(cfg: ToyWorldConfig) -> str:
    """Hash of every `ToyWorldConfig` field but `cache_dir` (works on a DictConfig too)."""
    fields = {}
    for f in dataclasses.fields(ToyWorldConfig):
        if f.name == "cache_dir":
            continue
        value = getattr(cfg, f.name)
        # A float given as `1` on the command line must hash like `1.0`.
        fields[f.name] = float(value) if isinstance(f.default, float) else value
    fields["world_version"] = WORLD_VERSION
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def cache_root(cfg: ToyWorldConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    return prefopt_cache_root() / "toy"


def build_toy_world(cfg: ToyWorldConfig, progress: bool = True) -> ToyWorld:
    """The world of `cfg`: loaded from the cache if it was built before (and its files still
    match their manifest), else built now; a corrupt world is moved aside and built again."""
    root = cache_root(cfg)
    final = root / cache_key(cfg)
    if final.is_dir() and _usable(final):
        log.info("toy world: using the cached world in %s", final)
        return ToyWorld.at(final)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=root))
    log.info("toy world: building %s (cached for later runs)", final)
    try:
        with _one_thread(), reported_disk_full(final, lambda: folder_bytes(staging), _FULL, True):
            _build(cfg, staging, progress)
            seal(staging)
        staging.chmod(0o755)  # mkdtemp's 0700 would hide the world from other users
        os.rename(staging, final)
    except OSError:
        # Another process finished the same world first: theirs is as good as ours.
        if not final.is_dir():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ToyWorld.at(final)


_FULL = "set toy.cache_dir (or $PREFOPT_CACHE) to a larger disk"


def _usable(world: Path) -> bool:
    """Whether the cached world's files match its manifest. A world that does not is moved
    aside under a lock, checked again there first: another process may have replaced it with
    a fresh one meanwhile (the healthy path takes no lock: a read-only cache works)."""
    if seal_problem(world) is None:
        return True
    with file_lock(world.with_name(f"{world.name}.lock")):
        problem = seal_problem(world) if world.is_dir() else None
        if problem is None:
            return world.is_dir()
        set_aside(world, problem)
    return False


def _build(cfg: ToyWorldConfig, out: Path, progress: bool) -> None:
    start = time.perf_counter()
    rng = random.Random(cfg.seed)
    prompts = all_prompts()
    n_eval = cfg.n_val_prompts + cfg.n_test_prompts
    if cfg.n_train_prompts + n_eval > len(prompts):
        raise ValueError(
            f"toy: n_train_prompts + n_val_prompts + n_test_prompts = "
            f"{cfg.n_train_prompts + n_eval}, but the toy language has only {len(prompts)} prompts"
        )
    rng.shuffle(prompts)
    val, test = prompts[: cfg.n_val_prompts], prompts[cfg.n_val_prompts : n_eval]
    train = prompts[n_eval : n_eval + cfg.n_train_prompts]

    torch.manual_seed(cfg.seed)
    tokenizer = build_tokenizer()
    model = build_model(cfg, tokenizer)
    sft_loss = train_sft(
        model, tokenizer, sft_examples(rng, prompts[n_eval:], cfg.sft_texts), cfg, progress
    )
    _save(model, tokenizer, out / "model")

    # Reseeding here keeps the samples independent of how many random numbers SFT drew.
    torch.manual_seed(cfg.seed)
    stats = {}
    for split, split_prompts in zip(SPLITS, (train, val, test), strict=True):
        pairs = sample_pairs(model, tokenizer, split_prompts, cfg.max_new_tokens, progress, split)
        if split == "train":
            pairs = sample_labels(pairs, cfg.label_temperature, random.Random(cfg.seed))
        with open(out / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps(pair) + "\n" for pair in pairs)
        gaps = [p["chosen_reward"] - p["rejected_reward"] for p in pairs]
        stats[split] = {
            "prompts": len(split_prompts),
            "pairs": len(pairs),
            "mean_reward_gap": sum(gaps) / max(1, len(gaps)),
            "labels_against_reward": sum(gap < 0 for gap in gaps) / max(1, len(gaps)),
        }
    summary = {
        "config": {f.name: getattr(cfg, f.name) for f in dataclasses.fields(ToyWorldConfig)},
        "world_version": WORLD_VERSION,
        "parameters": sum(p.numel() for p in model.parameters()),
        "sft_final_loss": sft_loss,
        "splits": stats,
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    (out / "world.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("toy world: built in %.1f s: %s", summary["build_seconds"], stats)


@contextmanager
def _one_thread():
    """Run torch on one intra-op thread, then restore the caller's setting.

    A model this small gains little from a second thread, while on a busy machine OpenMP's
    spin-waiting made the SFT 5-20x slower with two threads than with one. One thread also
    makes the built world independent of the machine's core count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _save(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, path: Path) -> None:
    # save_pretrained draws a bar for its single shard: noise between the build's own bars.
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()


@torch.no_grad()
def sample_completions(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    prompts: list[str],
    per_prompt: int,
    max_new_tokens: int,
) -> list[list[str]]:
    """`per_prompt` completions per prompt, sampled at temperature 1 without truncation."""
    batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    config = sampling_config(
        temperature=1.0,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        stop_ids=[tokenizer.eos_token_id],
    )
    config.num_return_sequences = per_prompt
    with checkpoint_generation_config_aside(model):
        output = model.generate(**batch, generation_config=config)
    texts = tokenizer.batch_decode(
        output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True
    )
    # Leading space: see the text convention in `prefopt.toy.language`.
    completions = [" " + text.strip() for text in texts]
    return [completions[i : i + per_prompt] for i in range(0, len(completions), per_prompt)]


def sample_labels(pairs: list[dict], temperature: float, rng: random.Random) -> list[dict]:
    """Relabel reward-ordered pairs by the Bradley–Terry model: keep the order with probability
    σ((r_chosen − r_rejected)/τ), else swap chosen and rejected (with their rewards)."""
    if temperature <= 0:
        return pairs
    labelled = []
    for pair in pairs:
        gap = (pair["chosen_reward"] - pair["rejected_reward"]) / temperature
        if rng.random() < 1 / (1 + math.exp(gap)):  # 1 − σ(gap): the annotator disagrees
            pair = {
                **pair,
                "chosen": pair["rejected"],
                "rejected": pair["chosen"],
                "chosen_reward": pair["rejected_reward"],
                "rejected_reward": pair["chosen_reward"],
            }
        labelled.append(pair)
    return labelled


def sample_pairs(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    prompts: list[str],
    max_new_tokens: int,
    progress: bool = True,
    split: str = "",
) -> list[dict]:
    """One reward-labelled pair per prompt, in prompt order; prompts that keep tying are dropped."""
    pairs: dict[int, dict] = {}
    pending = list(range(len(prompts)))
    bar = tqdm(total=len(prompts), desc=f"toy world: sampling {split} pairs", disable=not progress)
    for _ in range(_SAMPLING_ATTEMPTS):
        tied = []
        for start in range(0, len(pending), _SAMPLING_BATCH):
            chunk = pending[start : start + _SAMPLING_BATCH]
            samples = sample_completions(
                model, tokenizer, [prompts[i] for i in chunk], 2, max_new_tokens
            )
            for i, (a, b) in zip(chunk, samples, strict=True):
                ra, rb = reward(a), reward(b)
                if ra == rb:
                    tied.append(i)
                    continue
                if ra < rb:
                    a, b, ra, rb = b, a, rb, ra
                pairs[i] = {
                    "prompt": prompts[i],
                    "chosen": a,
                    "rejected": b,
                    "chosen_reward": ra,
                    "rejected_reward": rb,
                }
                bar.update()
        pending = tied
    bar.update(len(pending))
    bar.close()
    return [pairs[i] for i in sorted(pairs)]
