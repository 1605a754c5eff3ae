"""Tiny random Qwen-VL policies in HF format, built locally (no hub access is possible here).

A tiny policy is a real Qwen2.5-VL or Qwen3-VL architecture with very small widths, a byte-level
BPE tokenizer trained here on the protocol's own wording, Qwen's special tokens plus `[SEG]` and
the protocol tags as added tokens, our chat template, and a pinned image processor. It loads in
transformers and in vLLM exactly like a real checkpoint, so every code path is the production one.

Build is deterministic (fixed seeds) and cached: the directory is reused when its stamp matches.
Usage: python -m rollout.tiny_policy [--family qwen2.5-vl|qwen3-vl|all] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

from env.prompts import PROTOCOL_TAGS, SEG_TOKEN, corpus_for_tokenizer
from rollout.processor_config import pinned_image_processor_kwargs

BUILD_VERSION = "3"  # bump when the recipe changes so cached builds are rebuilt

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Our own chat template: Qwen-style turn markers, images as <|vision_start|><|image_pad|><|vision_end|>
# (the processor expands the pad to the image's token count). No default system prompt is injected.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}"
    "{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

FAMILIES = {
    "qwen2.5-vl": "tiny-qwen2.5-vl",
    "qwen3-vl": "tiny-qwen3-vl",
}

# Widths: head_dim 64 (vLLM's CPU attention supports 32, 64, 80, ... but not 16).
TEXT_HIDDEN = 128
TEXT_LAYERS = 2
TEXT_HEADS = 2
TEXT_KV_HEADS = 1
VISION_HIDDEN = 64
VISION_DEPTH = 2
VISION_HEADS = 2


def _extra_corpus() -> list[str]:
    from env.synthetic import COLORS, SHAPES, SPEED_WORDS

    words = []
    for c in COLORS:
        for s in SHAPES:
            for d in list(SPEED_WORDS) + ["still"]:
                words.append(f"the {c} {s} moving {d}")
    words += [
        "the shape that leaves the scene first", "which shape shows up last in the video?",
        "the object that travels the farthest during the clip", "the largest shape on screen",
        "the only shape that is visible the whole time", "all the squares", "all the circles",
        '{"start": 3, "end": 17, "keyframe": 9}', "<think> Step 1: temporal Step 2: spatial "
        "Step 3: expression Action: select </think>",
    ]
    return words


def train_tokenizer(vocab_size: int = 1024):
    """Byte-level BPE on the protocol corpus; returns a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=QWEN_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = corpus_for_tokenizer() + _extra_corpus()
    tok.train_from_iterator(corpus * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=QWEN_SPECIAL_TOKENS[1:] + [SEG_TOKEN],
    )
    fast.add_tokens(list(PROTOCOL_TAGS), special_tokens=False)
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 32768
    return fast


def _padded_vocab(n: int, multiple: int = 64) -> int:
    return ((n + multiple - 1) // multiple) * multiple


def _model_config(family: str, tokenizer):
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    vocab = _padded_vocab(len(tokenizer))
    text = dict(
        vocab_size=vocab,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=TEXT_HIDDEN * 2,
        num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=TEXT_HEADS,
        num_key_value_heads=TEXT_KV_HEADS,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
    )
    common = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    if family == "qwen2.5-vl":
        from transformers import Qwen2_5_VLConfig

        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]}
        vision = dict(
            depth=VISION_DEPTH, hidden_size=VISION_HIDDEN, intermediate_size=VISION_HIDDEN * 2,
            num_heads=VISION_HEADS, out_hidden_size=TEXT_HIDDEN, patch_size=14, spatial_merge_size=2,
            temporal_patch_size=2, window_size=112, fullatt_block_indexes=[VISION_DEPTH - 1],
        )
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
    if family == "qwen3-vl":
        from transformers import Qwen3VLConfig

        text["head_dim"] = TEXT_HIDDEN // TEXT_HEADS
        text["rope_parameters"] = {
            "rope_type": "default", "rope_theta": 5e6, "mrope_section": [8, 12, 12], "mrope_interleaved": True,
        }
        vision = dict(
            depth=VISION_DEPTH, hidden_size=VISION_HIDDEN, intermediate_size=VISION_HIDDEN * 2,
            num_heads=VISION_HEADS, out_hidden_size=TEXT_HIDDEN, patch_size=16, spatial_merge_size=2,
            temporal_patch_size=2, num_position_embeddings=256, deepstack_visual_indexes=[0],
        )
        return Qwen3VLConfig(text_config=text, vision_config=vision, **common)
    raise ValueError(f"unknown tiny policy family '{family}'; known: {list(FAMILIES)}")


def _processor(family: str, tokenizer):
    kwargs = pinned_image_processor_kwargs(family)
    if family == "qwen2.5-vl":
        from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

        image = Qwen2VLImageProcessor(**kwargs)
        video = Qwen2VLVideoProcessor(patch_size=14)
        return Qwen2_5_VLProcessor(image_processor=image, tokenizer=tokenizer, video_processor=video,
                                   chat_template=CHAT_TEMPLATE)
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    image = Qwen2VLImageProcessor(**kwargs)
    video = Qwen3VLVideoProcessor(patch_size=16)
    return Qwen3VLProcessor(image_processor=image, tokenizer=tokenizer, video_processor=video,
                            chat_template=CHAT_TEMPLATE)


def _stamp(family: str) -> str:
    import env.prompts

    src = (Path(__file__).read_text() + Path(__file__).with_name("processor_config.py").read_text()
           + Path(env.prompts.__file__).read_text())
    return hashlib.sha256(f"{BUILD_VERSION}:{family}:{src}".encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    return Path(".cache/videoseg")


def tiny_policy_dir(name_or_family: str, cache_dir: str | Path | None = None) -> Path:
    family = name_or_family.removeprefix("tiny-")
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny policy '{name_or_family}'; known: {list(FAMILIES.values())}")
    return Path(cache_dir or default_cache_dir()) / FAMILIES[family]


def build_tiny_policy(family: str, cache_dir: str | Path | None = None, force: bool = False) -> Path:
    """Build (or reuse) the tiny policy of `family`; returns its HF directory."""
    import torch
    import transformers

    out = tiny_policy_dir(family, cache_dir)
    family = family.removeprefix("tiny-")
    stamp_file = out / "videoseg_tiny_stamp.json"
    stamp = _stamp(family)
    if not force and stamp_file.exists() and json.loads(stamp_file.read_text()).get("stamp") == stamp:
        return out
    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.manual_seed(1234)
    tokenizer = train_tokenizer()
    config = _model_config(family, tokenizer)
    if family == "qwen2.5-vl":
        model = transformers.Qwen2_5_VLForConditionalGeneration(config)
    else:
        model = transformers.Qwen3VLForConditionalGeneration(config)
    model = model.to(torch.float32).eval()
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.save_pretrained(tmp, safe_serialization=True)
    processor = _processor(family, tokenizer)
    processor.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "videoseg_tiny_stamp.json").write_text(json.dumps({"stamp": stamp, "family": family}))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="all", choices=["all", *FAMILIES])
    ap.add_argument("--cache-dir", default=str(default_cache_dir()))
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    families = list(FAMILIES) if args.family == "all" else [args.family]
    for fam in families:
        print(build_tiny_policy(fam, args.cache_dir, args.force))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
