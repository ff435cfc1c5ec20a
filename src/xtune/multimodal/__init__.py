"""LLaVA-style multimodal training: a vision encoder and a projector give the LLM eyes.

model.py builds and loads transformers' LlavaForConditionalGeneration; data.py reads the LLaVA data format and
batches images; train.py is what the fine-tuning recipe calls for a config with `model.vision`; chat.py answers
about an image; mmbench.py scores a multiple-choice image benchmark.
"""
