"""Token-in/token-out conversation building for multi-turn episodes.

The history is never re-rendered from text. The turn-0 prompt is rendered once with the policy's
chat template; after that every assistant turn contributes exactly the token ids the engine
sampled, and every environment reply contributes a segment rendered on its own. The segment text
is derived from the chat template by difference (render a conversation with and without the
reply), so the codec works with any Qwen-style template, ours or a real checkpoint's.

Images appear in compact form: one `<|image_pad|>` per image. vLLM expands each pad to the image's
token count (it must: given pre-expanded ids it expands them again); the HF processor does the same
expansion for the learner, and a test proves both give identical ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from env.types import Observation

_PLACEHOLDER = "\u2063VIDEOSEG_ASSISTANT\u2063"


@dataclass
class Segment:
    """A piece of the conversation the environment contributes (loss mask 0)."""

    token_ids: list[int]
    images: list[np.ndarray] = field(default_factory=list)
    text: str = ""


def observation_content(obs: Observation) -> list[dict]:
    """Chat-template content parts for an observation (text pieces and image slots in order)."""
    content: list[dict] = []
    for kind, value in obs.parts:
        if kind == "text":
            if content and content[-1]["type"] == "text":
                content[-1] = {"type": "text", "text": content[-1]["text"] + str(value)}
            else:
                content.append({"type": "text", "text": str(value)})
        elif kind == "image":
            content.append({"type": "image"})
        else:
            raise ValueError(f"unknown observation part kind {kind!r}")
    return content


class ConversationCodec:
    """Turns observations into token segments for one tokenizer + chat template."""

    def __init__(self, tokenizer, system_prompt: str):
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.im_end_id = self._single_id("<|im_end|>")
        self.image_pad_id = self._single_id("<|image_pad|>")
        self.seg_id = self._single_id("[SEG]")
        self._after_turn = self._text_after_assistant()
        if not self._after_turn.startswith("<|im_end|>"):
            raise ValueError(
                "chat template does not close an assistant turn with <|im_end|>; got "
                f"{self._after_turn!r}"
            )

    # -------------------------------------------------------------------------------- helpers
    def _single_id(self, token: str) -> int:
        ids = self.tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"the tokenizer must encode {token!r} as one token, got {ids}")
        return ids[0]

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _dummy_history(self) -> list[dict]:
        return [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": [{"type": "text", "text": "x"}]},
            {"role": "assistant", "content": _PLACEHOLDER},
        ]

    def _text_after_assistant(self) -> str:
        rendered = self._render(self._dummy_history(), add_generation_prompt=False)
        tail = rendered.split(_PLACEHOLDER, 1)[1]
        return tail

    # ------------------------------------------------------------------------------ segments
    def first_prompt(self, obs: Observation) -> Segment:
        """System prompt + the turn-0 observation + the assistant header."""
        messages = [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": observation_content(obs)},
        ]
        text = self._render(messages, add_generation_prompt=True)
        return self._segment(text, obs)

    def env_reply(self, obs: Observation, turn_ended_with_im_end: bool) -> Segment:
        """The tokens between one assistant turn and the next: close, user reply, assistant header.

        If the sampled turn already ends with <|im_end|> (the normal case: it is the stop token), the
        segment starts right after it; otherwise (a truncated turn) the segment closes the turn.
        """
        history = self._dummy_history()
        before = self._render(history, add_generation_prompt=False)
        after = self._render(history + [{"role": "user", "content": observation_content(obs)}],
                             add_generation_prompt=True)
        if not after.startswith(before):
            raise ValueError("chat template is not prefix-stable; cannot append turns token-wise")
        text = self._after_turn + after[len(before):]
        if turn_ended_with_im_end:
            text = text[len("<|im_end|>"):]
        return self._segment(text, obs)

    def _segment(self, text: str, obs: Observation) -> Segment:
        ids = self.encode(text)
        n_pads = sum(1 for t in ids if t == self.image_pad_id)
        if n_pads != len(obs.images):
            raise ValueError(f"rendered {n_pads} image slots for {len(obs.images)} images")
        return Segment(token_ids=ids, images=list(obs.images), text=text)

    def seg_positions(self, token_ids: list[int]) -> list[int]:
        return [i for i, t in enumerate(token_ids) if t == self.seg_id]
