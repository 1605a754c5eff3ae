"""A cheap in-process check of what a policy writes: greedy first turns with HF `generate`.

SFT validation uses it to watch the format being learned without starting an inference engine:
each prompt is the env's real turn-0 observation (tokenised as the rollout does: pads expanded to
the pinned processor's token counts), decoded greedily until <|im_end|>, then parsed with the
protocol parser. It measures the first turn only; `learner.evaluate` plays whole episodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from env.protocol import parse_turn
from env.types import Action
from rollout.replay import expand_image_pads

# Tokens only the environment may place (the rollout bans them with a logit bias too).
_ENV_ONLY = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")


@dataclass
class ProbeResult:
    sample_id: str
    text: str
    valid: bool  # the turn parses (think block, one action, VTG, [SEG] token)
    error: str | None


@torch.no_grad()
def greedy_first_turns(lm, image_processor, codec, env, samples, image_tokens, max_new_tokens: int = 160,
                       device: str = "cpu") -> list[ProbeResult]:
    """Greedy first turn of `lm` (an HF Qwen-VL model) for each sample's turn-0 observation."""
    was_training = lm.training
    lm.eval()
    banned = [[codec.tokenizer.convert_tokens_to_ids(t)] for t in _ENV_ONLY]
    out = []
    try:
        for sample in samples:
            obs = env.reset(sample, f"probe:{sample.sample_id}").observation
            seg = codec.first_prompt(obs)
            ids = expand_image_pads(seg.token_ids, codec.image_pad_id, [image_tokens(im) for im in seg.images])
            inputs = torch.tensor([ids], device=device)
            kwargs = {}
            if seg.images:
                proc = image_processor(images=list(seg.images), return_tensors="pt")
                kwargs = {"pixel_values": proc["pixel_values"].to(device, next(lm.parameters()).dtype),
                          "image_grid_thw": proc["image_grid_thw"].to(device),
                          "mm_token_type_ids": (inputs == lm.config.image_token_id).to(torch.int32)}
            gen = lm.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), do_sample=False,
                              max_new_tokens=max_new_tokens, eos_token_id=codec.im_end_id,
                              pad_token_id=codec.tokenizer.pad_token_id, bad_words_ids=banned, **kwargs)
            new = gen[0, len(ids):].tolist()
            if new and new[-1] == codec.im_end_id:
                new = new[:-1]
            text = codec.tokenizer.decode(new, skip_special_tokens=False)
            parsed = parse_turn(text)
            out.append(ProbeResult(sample.sample_id, text, isinstance(parsed, Action),
                                   None if isinstance(parsed, Action) else parsed.code))
    finally:
        lm.train(was_training)
    return out


def valid_rate(results: list[ProbeResult]) -> float:
    return sum(r.valid for r in results) / len(results) if results else 0.0
