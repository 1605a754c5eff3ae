"""The trainable policy: a Qwen-VL chat model plus the [SEG] projector and SAM2's prompt encoder and
mask decoder (METHOD.md section 1). SAM2's image encoder and memory stay frozen in the reward pool;
keyframe features arrive from there.

Checkpoint layout (a directory): the HF policy (config, weights, tokenizer, processor; loads in
transformers and vLLM) plus `videoseg_heads/heads.safetensors` holding the projector, prompt encoder and
mask decoder under the same prefixes the reward pool uses.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path

import torch
from torch import nn

from segmentation.language_decode import language_decode
from segmentation.reward_pool import WEIGHT_PREFIXES
from segmentation.seg_head import SegProjector, build_projector

log = logging.getLogger(__name__)

# In a subdirectory: vLLM's loader reads every top-level *.safetensors of a model directory and
# rejects names that are not in the HF model (projector, prompt encoder, mask decoder).
HEADS_FILE = "videoseg_heads/heads.safetensors"
TORCH_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


class _shared_vision:
    """Temporarily replaces the model's `get_image_features` with one that encodes the distinct
    images once and hands back their features in slot order (the public method's contract)."""

    def __init__(self, model, pixel_values, unique_grid, image_index):
        self.model, self.pv, self.grid, self.index = model, pixel_values, unique_grid, image_index.tolist()

    def __enter__(self):
        original = type(self.model).get_image_features.__get__(self.model)

        def shared(pixel_values, image_grid_thw=None, **kwargs):
            out = original(self.pv, self.grid, **kwargs)
            pooled = out.pooler_output if hasattr(out, "pooler_output") else out
            picked = tuple(pooled[i] for i in self.index)
            if hasattr(out, "pooler_output"):
                out.pooler_output = picked
                if getattr(out, "deepstack_features", None) is not None:
                    out.deepstack_features = [tuple(f[i] for i in self.index) for f in out.deepstack_features]
                return out
            return picked

        self.model.get_image_features = shared
        return self

    def __exit__(self, *exc):
        del self.model.get_image_features  # back to the class's method
        return False


def mm_token_types(input_ids: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """Modality of every token as transformers expects it: 0 text, 1 image."""
    return (input_ids == image_token_id).to(torch.int32)


class SegPolicy(nn.Module):
    def __init__(self, lm: nn.Module, projector: SegProjector, sam_prompt_encoder: nn.Module,
                 sam_mask_decoder: nn.Module, seg_token_id: int):
        super().__init__()
        self.lm = lm
        self.projector = projector
        self.sam_prompt_encoder = sam_prompt_encoder
        self.sam_mask_decoder = sam_mask_decoder
        self.seg_token_id = int(seg_token_id)

    # --------------------------------------------------------------------------- forward
    def hidden_states(self, input_ids, attention_mask, pixel_values=None, image_grid_thw=None,
                      image_index=None, unique_grid=None, position_ids=None):
        """Last-layer hidden states (after the final norm), (B, T, H).

        With `image_index`, `pixel_values` holds only the distinct images (grids `unique_grid`) and
        every image slot names its row: the vision tower runs once per distinct frame and its
        outputs (and deepstack features) are reused, gradients summing over the reuses.
        `position_ids` (3, B, T) from `rope_position_ids` skip transformers' own computation."""
        if pixel_values is not None and image_index is not None:
            with _shared_vision(self.lm.model, pixel_values, unique_grid, image_index):
                return self.hidden_states(input_ids, attention_mask, pixel_values, image_grid_thw,
                                          position_ids=position_ids)
        kwargs = {}
        if pixel_values is not None:
            # mm_token_type_ids marks image tokens (1) for multimodal RoPE; without it transformers
            # silently falls back to 1-D positions for Qwen2.5-VL (and refuses for Qwen3-VL).
            kwargs = {"pixel_values": pixel_values, "image_grid_thw": image_grid_thw,
                      "mm_token_type_ids": mm_token_types(input_ids, self.lm.config.image_token_id)}
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        out = self.lm.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
        return out.last_hidden_state

    def rope_position_ids(self, input_ids, attention_mask, image_grid_thw) -> torch.Tensor | None:
        """Multimodal RoPE positions (3, B, T) of a batch, computed on the device its tensors are on.

        Inside the forward, transformers derives them on the GPU with four host syncs per image (a
        16-sequence RL step: ~1.7k syncs, each draining the GPU's queue). Called on the collated CPU
        tensors before they move, the same function costs the GPU nothing. None without images."""
        if image_grid_thw is None or not hasattr(self.lm.model, "get_rope_index"):
            return None
        positions, _ = self.lm.model.get_rope_index(
            input_ids=input_ids, mm_token_type_ids=mm_token_types(input_ids, self.lm.config.image_token_id),
            image_grid_thw=image_grid_thw, attention_mask=attention_mask)
        return positions

    def seg_embeddings(self, hidden: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return self.projector(hidden[rows, cols]).float()

    def decode(self, seg_embeds: torch.Tensor, features: dict, high_res_index: torch.Tensor | None = None):
        """Differentiable decode of one mask per embedding (a LanguageDecodeOutput).

        `features` hold one entry per embedding, or (with `high_res_index`) the high-res maps hold one
        entry per distinct frame and the index names each embedding's frame, so the decoder's
        high-res convolutions run once per frame. Not gated by SAM2's object score: gated pixels
        are constants and would carry no gradient (the score head is trained by its own loss)."""
        return language_decode(self.sam_prompt_encoder, self.sam_mask_decoder, features, seg_embeds,
                               multimask=True, gate_by_object_score=False, high_res_index=high_res_index)

    # ------------------------------------------------------------------------ weights
    def lm_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights the inference engine holds, with checkpoint names (as save_pretrained writes)."""
        return self.lm.state_dict()

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        out = {}
        for prefix, module in zip(WEIGHT_PREFIXES, (self.projector, self.sam_prompt_encoder, self.sam_mask_decoder)):
            for k, v in module.state_dict().items():
                out[prefix + k] = v
        return out

    def load_head_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        modules = dict(zip(WEIGHT_PREFIXES, (self.projector, self.sam_prompt_encoder, self.sam_mask_decoder)))
        for prefix, module in modules.items():
            part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if part:
                module.load_state_dict(part)


def seg_token_id_of(policy_dir: str | Path) -> int:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(policy_dir))
    ids = tok.encode("[SEG]", add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"the tokenizer in {policy_dir} does not have [SEG] as one token (got {ids}); "
                         "prepare the checkpoint with the [SEG] token added")
    return ids[0]


def build_policy(model_cfg, policy_dir: str | Path, device: str = "cpu", seed: int = 0,
                 gradient_checkpointing: bool = False, freeze_vision: bool = False,
                 freeze_sam_decoder: bool = False, checkpoint_fraction: float = 1.0) -> SegPolicy:
    """Load the HF policy from `policy_dir`, SAM2's prompt encoder and mask decoder from the SAM2
    checkpoint (or the shared random one), and the heads file in `policy_dir` when present."""
    from transformers import AutoModelForImageTextToText

    from segmentation.sam2_models import sam2_from_model_config

    policy_dir = Path(policy_dir)
    dtype = TORCH_DTYPES[model_cfg.dtype]
    lm = AutoModelForImageTextToText.from_pretrained(str(policy_dir), dtype=dtype)
    if getattr(lm.config, "tie_word_embeddings", False):
        raise ValueError(f"{policy_dir}: embeddings and lm_head are tied; the method trains them untied "
                         "(prepare the checkpoint with untied weights)")
    hidden = lm.config.text_config.hidden_size
    sam2 = sam2_from_model_config(model_cfg, "cpu")
    heads_path = policy_dir / HEADS_FILE
    projector = build_projector(hidden, model_cfg.seg_embed_dim, model_cfg.projector_checkpoint, seed=seed)
    policy = SegPolicy(lm, projector, copy.deepcopy(sam2.sam_prompt_encoder), copy.deepcopy(sam2.sam_mask_decoder),
                       seg_token_id_of(policy_dir))
    del sam2
    if heads_path.is_file():
        from safetensors.torch import load_file

        policy.load_head_state_dict(load_file(str(heads_path)))
        log.info("loaded [SEG] heads from %s", heads_path)
    if model_cfg.vision_attention == "batched":
        from learner.vision_attention import batch_vision_attention

        log.info("vision attention batched in %d modules", batch_vision_attention(lm))
    if gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lm.config.use_cache = False
        if checkpoint_fraction < 1.0:
            from learner.blocks import checkpoint_fraction as set_fraction

            log.info("gradient checkpointing kept on %d blocks", set_fraction(lm, checkpoint_fraction))
    if freeze_vision:
        for p in lm.model.visual.parameters():
            p.requires_grad_(False)
    if freeze_sam_decoder:
        for p in [*policy.sam_prompt_encoder.parameters(), *policy.sam_mask_decoder.parameters()]:
            p.requires_grad_(False)
    return policy.to(device)


def reference_model(policy: SegPolicy) -> nn.Module:
    """A frozen copy of the language model for the KL term."""
    ref = copy.deepcopy(policy.lm).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def save_policy(policy: SegPolicy, out_dir: str | Path, source_dir: str | Path,
                lm_state: dict | None = None, heads_state: dict | None = None) -> Path:
    """Write an HF policy directory (loadable by transformers and vLLM) plus the heads file.

    Tokenizer/processor files are copied from the source directory so the saved policy is complete."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    policy.lm.save_pretrained(str(tmp), state_dict=lm_state, safe_serialization=True)
    for f in Path(source_dir).iterdir():
        if f.is_file() and not (tmp / f.name).exists() and not f.name.endswith((".safetensors", ".bin")) \
                and f.name != "model.safetensors.index.json":
            shutil.copy2(f, tmp / f.name)
    heads = heads_state if heads_state is not None else policy.head_state_dict()
    (tmp / HEADS_FILE).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in heads.items()}, str(tmp / HEADS_FILE))
    (tmp / "videoseg_policy.json").write_text(json.dumps({"seg_token_id": policy.seg_token_id}))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir
