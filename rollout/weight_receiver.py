"""The vLLM worker extension that receives new policy weights.

vLLM mixes this class into its worker (`worker_extension_cls`), so its methods run inside the
engine's worker process and are invoked with `collective_rpc`. Weights arrive as safetensors files
written by the learner (on the same host: /dev/shm, i.e. shared memory; a few large files instead of
one call per parameter). The worker's own `reload_weights` does the loading: it is vLLM's in-place
reload, which re-runs the per-layer post-processing that CPU kernels need after packing weights.
"""

from __future__ import annotations


class WeightReceiver:
    def videoseg_load_weights(self, files: list[str]) -> int:
        from safetensors import safe_open

        count = 0

        def tensors():
            nonlocal count
            for path in files:
                with safe_open(path, framework="pt", device="cpu") as f:
                    for name in f.keys():
                        count += 1
                        yield name, f.get_tensor(name)

        self.reload_weights(weights_iterator=tensors(), is_checkpoint_format=True)
        return count
