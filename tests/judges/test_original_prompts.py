"""A judge reads the prompt as the data wrote it: for a multi-turn conversation, every turn
through the judge's own chat template, never text decoded from the policy's chat-templated
ids (role headers gone, the conversation collapsed into one user turn)."""

from types import SimpleNamespace

import torch

from prefopt.config.schema import EvalConfig
from prefopt.data.original_prompts import originals_of
from prefopt.evaluation.callback import GenerationEvalCallback
from prefopt.judges.reward_model import RewardModelJudge
from prefopt.online.rounds import prompt_ids_of, training_prompts

from ..conftest import tiny_llama
from ..data.conftest import build_tokenizer, prepare_rows
from .test_judges import save_reward_model

CHATML = (  # the policy's template
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3 = (  # the judge's, another family's
    "<|begin_of_text|>{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
    "<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>{% endfor %}"
)
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hi there"},
    {"role": "assistant", "content": "hello there friend"},
    {"role": "user", "content": "how are you?"},
]
AS_THE_JUDGE_READS_IT = (
    "<|begin_of_text|>"
    "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nhi there<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nhello there friend<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nhow are you?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
"""The whole conversation, then the completion as the assistant's turn."""


class Recording:
    """A tokenizer that remembers every text it was asked to encode."""

    def __init__(self, tokenizer):
        self.__dict__.update(tokenizer=tokenizer, texts=[])

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def __call__(self, texts, **kwargs):
        self.texts.extend([texts] if isinstance(texts, str) else texts)
        return self.tokenizer(texts, **kwargs)


def conversational_examples(tmp_path):
    tokenizer = build_tokenizer()
    tokenizer.chat_template = CHATML
    record = {
        "prompt": CONVERSATION,
        "chosen": [{"role": "assistant", "content": "fine there"}],
        "rejected": [{"role": "assistant", "content": "go away"}],
    }
    examples, _ = prepare_rows(tmp_path, tokenizer, [record], max_length=128, max_prompt_length=96)
    return tokenizer, examples


def test_evaluation_judges_the_whole_original_conversation(tmp_path):
    tokenizer, examples = conversational_examples(tmp_path)
    judge = RewardModelJudge(str(save_reward_model(tmp_path / "rm")))
    judge.tokenizer.chat_template = LLAMA3
    judge.tokenizer = Recording(judge.tokenizer)
    cfg = EvalConfig(num_prompts=1, max_new_tokens=4, batch_size=2)
    callback = GenerationEvalCallback(cfg, tokenizer, judge)
    trainer = SimpleNamespace(
        datamodule=SimpleNamespace(val_examples=examples), global_step=0, is_global_zero=True,
        logger=None, callback_metrics={}, sanity_checking=False,
    )  # fmt: skip
    policy = tiny_llama(seed=1, vocab_size=len(tokenizer))
    module = SimpleNamespace(policy=policy, reference=None, device=torch.device("cpu"))
    callback.setup(trainer, module, "fit")
    callback.on_fit_start(trainer, module)
    callback.evaluate(trainer, module)

    # Step 0: the policy is the reference and samples with the same seed, the same completion.
    completion = callback.reference_samples.texts[0].strip()
    judged = [text for text in judge.tokenizer.texts if "Be brief." in text]  # not its probes
    assert judged == [AS_THE_JUDGE_READS_IT + completion + "<|eot_id|>"] * 2


def test_online_rounds_find_the_original_prompt_of_training_examples(tmp_path):
    """Training examples keep no prompt ids of their own: the round finds the prompt by the
    ids before the completion, and gets the conversation as written."""
    tokenizer, examples = conversational_examples(tmp_path)
    train_like = [{**e, "prompt_input_ids": []} for e in examples]
    prompts = training_prompts(train_like)
    assert originals_of(prompts, train_like, prompt_ids_of, tokenizer) == [CONVERSATION]
