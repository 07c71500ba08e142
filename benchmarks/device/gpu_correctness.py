"""GPU paths that CPU tests can only emulate, checked on a real GPU in one short call (~1 min):

- `flash_varlen`: several packed padding-free rows, each holding several sequences, give the
  log-probs of the same pairs padded under SDPA (the real flash-attn kernel, where installed);
- `flex` with a per-step reference: the reference scores the batch first under
  `inference_mode`, then the policy's forward and BACKWARD under the compiled FlexAttention
  kernel reuse the batch's block masks ("Inference tensors cannot be saved for backward" before
  the fix), and the log-probs match SDPA's;
- `trainer=fsdp loop=online` is refused in one line (exit 2) before anything loads.

    python benchmarks/device/gpu_correctness.py [--json OUT.json]

Prints one line per check (`ok` / `FAILED` / `skipped`) and exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import subprocess
import sys
import traceback

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from prefopt.data.packing import collate_packed_pairs, packed_part
from prefopt.model.attention import FLASH, flash_varlen_available, implementation
from prefopt.model.logprobs import completion_logps
from prefopt.model.packing import PairPacking

SHAPE = dict(
    vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
)  # fmt: skip


def pairs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)

    def tokens(k):
        return [rng.randrange(3, SHAPE["vocab_size"]) for _ in range(k)]

    out = []
    for _ in range(n):
        prompt = [1, *tokens(rng.randint(4, 40))]
        chosen, rejected = tokens(rng.randint(2, 30)), tokens(rng.randint(2, 30))
        out.append(
            {
                "chosen_input_ids": prompt + chosen,
                "chosen_prompt_length": len(prompt),
                "rejected_input_ids": prompt + rejected,
                "rejected_prompt_length": len(prompt),
            }
        )
    return out


def standard_rows(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if not k.startswith("packed")}


def models(name: str, dtype: torch.dtype):
    torch.manual_seed(0)
    standard = LlamaForCausalLM(LlamaConfig(**SHAPE)).to("cuda", dtype)
    standard.set_attn_implementation("sdpa")
    other = copy.deepcopy(standard)
    other.set_attn_implementation(name)
    return standard, other


def check_flash_varlen() -> str:
    if not flash_varlen_available():
        return "skipped (flash-attn is not installed)"
    standard, flash = models(FLASH, torch.bfloat16)
    batch = {k: v.cuda() for k, v in collate_packed_pairs(pairs(8, 0), 0, False, True, 160).items()}
    layout = packed_part(batch)
    rows = layout["input_ids"].shape[0]
    several = int(max((r == 0).sum() for r in layout["position_ids"]))
    assert rows > 1 and several > 1, (rows, several)
    with torch.no_grad():
        expected = completion_logps(standard, standard_rows(batch), None).summed.float()
        got = completion_logps(flash, layout, None).summed.float()
    error = float(((got - expected).abs() / expected.abs().clamp(min=1)).max())
    assert error < 2e-2, f"relative error {error:.3g} over {rows} rows"
    return f"ok ({rows} rows, up to {several} sequences a row, max rel. error {error:.2g})"


def check_flex_after_inference_mode_reference() -> str:
    standard, policy = models(implementation("flex"), torch.float32)
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    packing = PairPacking("true", True, None)
    for seed in (0, 1):  # step 1's probes build their own masks; step 2 reuses the reference's
        batch = {
            k: v.cuda() for k, v in collate_packed_pairs(pairs(8, seed), 0, True, True).items()
        }
        with torch.inference_mode():
            packing.logps(reference, batch, 64)
        got = packing.logps(policy, batch, 64)
        got.summed.sum().backward()  # raised "Inference tensors cannot be saved" before the fix
    with torch.no_grad():
        expected = completion_logps(standard, standard_rows(batch), 64).summed
    error = float((got.summed.detach() - expected).abs().max())
    assert error < 1e-3, f"max abs error {error:.3g}"
    return f"ok (policy backward after an inference_mode reference; max abs error {error:.2g})"


def check_fsdp_online_refused() -> str:
    command = [sys.executable, "-m", "prefopt.train", "trainer=fsdp", "loop=online",
               "eval.num_prompts=0", "toy.n_train_prompts=64"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    line = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    assert result.returncode == 2 and "fsdp with loop=online" in line, (result.returncode, line)
    return "ok (one line, exit 2)"


CHECKS = {
    "flash_varlen_rows": check_flash_varlen,
    "flex_reference_inference_mode": check_flex_after_inference_mode_reference,
    "fsdp_online_refused": check_fsdp_online_refused,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write {check: outcome} here")
    args = parser.parse_args(argv)
    outcomes, failed = {}, False
    for name, check in CHECKS.items():
        try:
            outcomes[name] = check()
        except Exception as error:  # noqa: BLE001 - each check reports, the next one runs
            traceback.print_exc()
            outcomes[name], failed = f"FAILED: {type(error).__name__}: {error}", True
        print(f"{name}: {outcomes[name]}", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(outcomes, handle, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
