"""Data preparation at real scale: prefopt against TRL 1.16's DPOTrainer, cold and warm.

    python benchmarks/data_benchmark.py --pairs 80000            # the issue's figures (~4 min)
    python benchmarks/data_benchmark.py --pairs 2000 --jobs 2    # a quick look

On an HH-RLHF-shaped jsonl of implicit-prompt pairs (`hh_shaped.py`; built once in --work), with
a byte-level BPE tokenizer trained on the same language (8,000 tokens), each measurement is its
own fresh process, so its time and peak memory are its own:

  prefopt cold   `PreferenceDataModule.setup()` with an empty data cache: read, tokenize, cache
  prefopt warm   the same again: the cache hit
  trl cold       `DPOTrainer(...)` on the same file with an empty `datasets` cache: TRL's
                 `_prepare_dataset` (prompt extraction, EOS, tokenization), as a user meets it
  trl warm       the same again: `datasets`' cache
  sweep          --jobs processes started at once on an empty cache, as a parallel sweep's
                 jobs (or DDP ranks) start: how many of them tokenized (it should be one)

Time is wall-clock of the data phase only (imports and model loading excluded). Memory is the
process's peak RSS, and that of its worker processes (forked: they share the parent's pages),
and the rise over the RSS before the data phase. Prints a table and writes JSON (--json).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MAX_LENGTH, MAX_PROMPT_LENGTH = 1024, 512


def rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------------------------------------
# Inputs, built once


def build_inputs(work: Path, pairs: int) -> dict[str, Path]:
    sys.path.insert(0, str(HERE))
    import hh_shaped

    work.mkdir(parents=True, exist_ok=True)
    data = work / f"hh_{pairs}.jsonl"
    if not data.exists():
        hh_shaped.write_jsonl(data.with_suffix(".tmp"), pairs)
        data.with_suffix(".tmp").rename(data)
    tokenizer_dir, model_dir = work / "tokenizer", work / "model"
    if not (model_dir / "config.json").exists():
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
        from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        backend.post_processor = processors.ByteLevel(trim_offsets=True)
        trainer = trainers.BpeTrainer(
            vocab_size=8000,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        backend.train_from_iterator(hh_shaped.corpus(3000), trainer)
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
        )
        tokenizer.save_pretrained(tokenizer_dir)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
        LlamaForCausalLM(config).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    return {"data": data, "tokenizer": tokenizer_dir, "model": model_dir}


# ---------------------------------------------------------------------------------------------
# Workers (one per process)


def run_prefopt(args) -> dict:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    from transformers import AutoTokenizer

    from prefopt.config.schema import DataConfig
    from prefopt.data import PreferenceDataModule

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    cfg = DataConfig(
        source="local",
        path=str(args.data),
        max_length=MAX_LENGTH,
        max_prompt_length=MAX_PROMPT_LENGTH,
        cache_dir=str(args.cache),
        num_proc=args.num_proc,
    )
    before = current_rss_mb()
    start = time.perf_counter()
    module = PreferenceDataModule(cfg, tokenizer)
    handler = _Seen("prepared data cached in")
    logging.getLogger("prefopt.data").addHandler(handler)
    module.setup("fit")
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "pairs": len(module.train_examples) + len(module.val_examples),
        "tokenized": handler.seen,
        "rss_before_mb": before,
        "peak_rss_mb": rss_mb(),
        "workers_peak_rss_mb": rss_mb(resource.RUSAGE_CHILDREN),
    }


class _Seen(logging.Handler):
    def __init__(self, text: str):
        super().__init__()
        self.text, self.seen = text, False

    def emit(self, record):
        self.seen = self.seen or self.text in record.getMessage()


def run_trl(args) -> dict:
    os.environ["HF_DATASETS_CACHE"] = str(args.cache)
    import tempfile

    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    datasets.disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model)
    config = DPOConfig(
        output_dir=tempfile.mkdtemp(), report_to=[], max_length=MAX_LENGTH, use_cpu=True
    )
    before = current_rss_mb()
    start = time.perf_counter()
    dataset = datasets.load_dataset("json", data_files=str(args.data), split="train")
    trainer = DPOTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer
    )
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "pairs": len(trainer.train_dataset),
        "tokenized": True,
        "rss_before_mb": before,
        "peak_rss_mb": rss_mb(),
        "workers_peak_rss_mb": rss_mb(resource.RUSAGE_CHILDREN),
    }


def spawn(worker: str, inputs: dict[str, Path], cache: Path, num_proc, wait: bool = True):
    command = [
        sys.executable,
        __file__,
        "--worker",
        worker,
        "--data",
        str(inputs["data"]),
        "--tokenizer",
        str(inputs["tokenizer"]),
        "--model",
        str(inputs["model"]),
        "--cache",
        str(cache),
    ]
    if num_proc is not None:
        command += ["--num-proc", str(num_proc)]
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    return _result(proc) if wait else proc


def _result(proc) -> dict:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"worker failed (exit {proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=80000)
    parser.add_argument("--work", default="/tmp/prefopt-data-benchmark")
    parser.add_argument("--modes", nargs="+", default=["prefopt", "trl", "sweep"])
    parser.add_argument("--jobs", type=int, default=3, help="processes of the sweep measurement")
    parser.add_argument("--num-proc", type=int, default=None, help="prefopt's data.num_proc")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    for name in ("data", "tokenizer", "model", "cache"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.worker:
        result = run_prefopt(args) if args.worker == "prefopt" else run_trl(args)
        print(json.dumps(result))
        return

    work = Path(args.work)
    inputs = build_inputs(work, args.pairs)
    results: dict[str, dict] = {}
    for mode in ("prefopt", "trl"):
        if mode not in args.modes:
            continue
        cache = work / f"cache-{mode}"
        shutil.rmtree(cache, ignore_errors=True)
        for phase in ("cold", "warm"):
            results[f"{mode} {phase}"] = result = spawn(mode, inputs, cache, args.num_proc)
            print(f"{mode} {phase}: {result['seconds']:.1f} s", file=sys.stderr, flush=True)
    if "sweep" in args.modes:
        cache = work / "cache-sweep"
        shutil.rmtree(cache, ignore_errors=True)
        start = time.perf_counter()
        procs = [
            spawn("prefopt", inputs, cache, args.num_proc, wait=False) for _ in range(args.jobs)
        ]
        jobs = [_result(proc) for proc in procs]
        results["sweep"] = {
            "jobs": args.jobs,
            "tokenized": sum(job["tokenized"] for job in jobs),
            "seconds": time.perf_counter() - start,
            "pairs": jobs[0]["pairs"],
        }
    report(results, args)


def report(results: dict[str, dict], args) -> None:
    print(f"\n{args.pairs} HH-shaped pairs, {os.cpu_count()} CPU cores")
    print(
        f"{'':14} {'seconds':>8} {'pairs':>7} {'peak RSS MB':>12} {'workers MB':>11} {'rise MB':>8}"
    )
    for name, r in results.items():
        if name == "sweep":
            continue
        rise = r["peak_rss_mb"] - r["rss_before_mb"]
        print(
            f"{name:14} {r['seconds']:8.1f} {r['pairs']:7d} {r['peak_rss_mb']:12.0f} "
            f"{r['workers_peak_rss_mb']:11.0f} {rise:8.0f}"
        )
    for phase in ("cold", "warm"):
        ours, theirs = results.get(f"prefopt {phase}"), results.get(f"trl {phase}")
        if ours and theirs:
            print(f"{phase}: prefopt is {theirs['seconds'] / ours['seconds']:.1f}x TRL's speed")
    if "sweep" in results:
        sweep = results["sweep"]
        print(
            f"sweep: {sweep['jobs']} jobs started at once, {sweep['tokenized']} tokenized, "
            f"{sweep['seconds']:.1f} s for all"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"pairs": args.pairs, **results}, indent=1))


if __name__ == "__main__":
    main()
