"""Models: loading checkpoints and tokenizers, LoRA adapters, completion log-probs, the per-model
packing probe, and exporting the aligned policy in Hugging Face format.

Nothing here knows about losses or Lightning: a model goes in, log-probs come out.
"""
