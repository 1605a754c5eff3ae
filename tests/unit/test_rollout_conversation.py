"""Token-in/token-out conversation building: segments match what the chat template renders."""

import numpy as np
import pytest

from env.prompts import SYSTEM_PROMPT
from env.types import FrameRef, Observation
from rollout.conversation import ConversationCodec, observation_content


def _obs(n_images, text="Frame {i}: "):
    parts, frames, images = [], [], []
    for i in range(n_images):
        parts.append(("text", text.format(i=i)))
        parts.append(("image", i))
        frames.append(FrameRef("d", "v", i, 6272))
        images.append(np.zeros((56, 84, 3), np.uint8))
    parts.append(("text", 'Query: "the red square"'))
    return Observation(parts=parts, frames=frames, images=images)


@pytest.fixture(scope="module")
def codec(tiny_qwen25_dir):
    from transformers import AutoTokenizer

    return ConversationCodec(AutoTokenizer.from_pretrained(tiny_qwen25_dir), SYSTEM_PROMPT)


def test_observation_content_merges_adjacent_text():
    obs = Observation(parts=[("text", "a"), ("text", "b"), ("image", 0), ("text", "c")],
                      frames=[FrameRef("d", "v", 0, 1)], images=[np.zeros((4, 4, 3), np.uint8)])
    assert observation_content(obs) == [{"type": "text", "text": "ab"}, {"type": "image"},
                                        {"type": "text", "text": "c"}]


def test_tito_sequence_equals_template_rendering(codec):
    tok = codec.tokenizer
    first = codec.first_prompt(_obs(3))
    answer = '<think> Step 1: x </think><select><VTG>{"start": 1, "end": 4, "keyframe": 2}</VTG><RefSeg>[SEG]</RefSeg></select>'
    sampled = tok.encode(answer, add_special_tokens=False) + [codec.im_end_id]
    reply = codec.env_reply(_obs(2), turn_ended_with_im_end=True)
    tito = first.token_ids + sampled + reply.token_ids
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": observation_content(_obs(3))},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": observation_content(_obs(2))},
    ]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert tok.decode(tito, skip_special_tokens=False) == rendered
    assert first.token_ids.count(codec.image_pad_id) == 3 and reply.token_ids.count(codec.image_pad_id) == 2
    assert reply.text.startswith("\n<|im_start|>user\n") and reply.text.endswith("<|im_start|>assistant\n")


def test_truncated_turn_gets_closed_by_the_env_segment(codec):
    reply = codec.env_reply(_obs(1), turn_ended_with_im_end=False)
    assert reply.token_ids[0] == codec.im_end_id


def test_image_count_mismatch_is_an_error(codec):
    obs = _obs(2)
    obs.images.pop()
    with pytest.raises(ValueError, match="image slots"):
        codec.first_prompt(obs)


def test_seg_positions(codec):
    ids = codec.encode("a [SEG] b [SEG]")
    assert len(codec.seg_positions(ids)) == 2
