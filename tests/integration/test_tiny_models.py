"""The tiny policies are real Qwen-VL checkpoints: they load in transformers and in vLLM (CPU)."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

FAMILIES = ["tiny_qwen25_dir", "tiny_qwen3_dir"]


def _frames(n=2, h=64, w=96, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for _ in range(n)]


def _messages():
    return [
        {"role": "system", "content": "protocol"},
        {"role": "user", "content": [{"type": "text", "text": "Frame 0: "}, {"type": "image"},
                                     {"type": "text", "text": "Frame 7: "}, {"type": "image"},
                                     {"type": "text", "text": 'Query: "the red square"'}]},
    ]


@pytest.mark.parametrize("fixture", FAMILIES)
def test_tokenizer_has_single_seg_token_and_protocol_tags(fixture, request):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(request.getfixturevalue(fixture))
    seg = tok.convert_tokens_to_ids("[SEG]")
    assert tok.encode("[SEG]", add_special_tokens=False) == [seg]
    assert tok.encode(" x [SEG] y", add_special_tokens=False).count(seg) == 1
    for tag in ("<think>", "</select>", "<VTG>", "<RefSeg>"):
        assert len(tok.encode(tag, add_special_tokens=False)) == 1
    text = '<answer><VTG>{"start": 2, "end": 9, "keyframe": 4}</VTG><RefSeg>[SEG]</RefSeg></answer>'
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


@pytest.mark.parametrize("fixture", FAMILIES)
def test_loads_in_transformers_and_generates(fixture, request):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = request.getfixturevalue(fixture)
    proc = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    assert not model.config.tie_word_embeddings
    assert model.get_input_embeddings().weight.data_ptr() != model.get_output_embeddings().weight.data_ptr()
    text = proc.apply_chat_template(_messages(), add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n") and text.count("<|image_pad|>") == 2
    enc = proc(text=[text], images=_frames(), return_tensors="pt")
    n_img_tokens = int((enc["input_ids"] == model.config.image_token_id).sum())
    merge = proc.image_processor.merge_size
    assert n_img_tokens == int(enc["image_grid_thw"].prod(-1).sum()) // merge**2
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=6, do_sample=False)
    assert out.shape[1] == enc["input_ids"].shape[1] + 6


@pytest.mark.slow
@pytest.mark.parametrize("fixture", FAMILIES)
def test_generates_in_vllm_cpu(fixture, request, tmp_path):
    path = request.getfixturevalue(fixture)
    script = tmp_path / "gen.py"
    # vLLM spawns engine processes, so it runs in its own interpreter with a __main__ guard.
    script.write_text(textwrap.dedent(f"""
        import json, sys
        import numpy as np
        from PIL import Image
        from transformers import AutoProcessor
        if __name__ == "__main__":
            from vllm import LLM, SamplingParams
            msgs = {_messages()!r}
            proc = AutoProcessor.from_pretrained({str(path)!r})
            text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            rng = np.random.default_rng(0)
            imgs = [Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)) for _ in range(2)]
            hf_ids = proc(text=[text], images=imgs)["input_ids"][0]
            llm = LLM(model={str(path)!r}, enforce_eager=True, gpu_memory_utilization=0.1,
                      max_model_len=2048, dtype="float32", limit_mm_per_prompt={{"image": 4}})
            out = llm.generate([{{"prompt": text, "multi_modal_data": {{"image": imgs}}}}],
                               SamplingParams(max_tokens=8, temperature=0.0, logprobs=0))[0]
            print("RESULT" + json.dumps({{"n": len(out.outputs[0].token_ids),
                                          "same_prompt": list(out.prompt_token_ids) == list(hf_ids),
                                          "logprobs": out.outputs[0].logprobs is not None}}))
    """))
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1")
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                         timeout=600, cwd=tmp_path)
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT")]
    assert res.returncode == 0 and line, res.stdout[-3000:] + res.stderr[-3000:]
    import json

    result = json.loads(line[0][6:])
    assert result == {"n": 8, "same_prompt": True, "logprobs": True}


def test_tiny_sam2_builds_from_shared_checkpoint(tiny_sam2_ckpt):
    from segmentation.sam2_models import build_sam2_model

    a = build_sam2_model("tiny", tiny_sam2_ckpt, 256)
    b = build_sam2_model("tiny", tiny_sam2_ckpt, 256)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb)
    with torch.no_grad():
        feats = a.forward_image(torch.randn(2, 3, 256, 256))
    assert feats["vision_features"].shape == (2, 256, 16, 16)
    assert sum(p.numel() for p in a.parameters()) < 10_000_000


def test_sam2_refuses_random_weights_unless_asked():
    from segmentation.sam2_models import Sam2ConfigError, build_sam2_model

    with pytest.raises(Sam2ConfigError, match="no SAM2 checkpoint"):
        build_sam2_model("tiny", None, 256)
    with pytest.raises(Sam2ConfigError, match="not found"):
        build_sam2_model("configs/nope.yaml", None, 256, allow_random=True)


def test_sam2_rejects_mismatched_checkpoint(tiny_sam2_ckpt, tmp_path):
    from segmentation.sam2_models import Sam2ConfigError, build_sam2_model

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(Sam2ConfigError, match="cannot be read"):
        build_sam2_model("tiny", bad, 256)
    with pytest.raises(Sam2ConfigError, match="does not match"):
        build_sam2_model("configs/sam2.1/sam2.1_hiera_t.yaml", tiny_sam2_ckpt, 256)
