"""Run under torchrun by tests/llava_next/test_llava_next_distributed.py: LLaVA-NeXT's own training
(``llava_vqtoken.train.llava_next.main``) of a tiny llava_qwen with a VQToken compressor, under DeepSpeed,
optionally stopped by an exception after a given step (an interrupted run).

usage: dist_train.py HUB MODEL DATA VIDEOS OUT DEEPSPEED_JSON STOP_AFTER_STEP(0 = never)"""

import json
import sys

SPEC = {"num_tokens": 8}
STEPS, SAVE_EVERY = 4, 2


class Interrupted(Exception):
    """Raised by the test's callback to end a run mid-way, as a killed job would."""


def stop_after(step: int) -> None:
    """Add, to every LLaVATrainer this process builds, a callback that raises after ``step`` steps."""
    import llava.train.llava_trainer as lt
    import transformers

    class Stop(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == step:
                raise Interrupted(f"stopped after step {step}")

    orig = lt.LLaVATrainer.__init__

    def init(self, *a, **kw):
        orig(self, *a, **kw)
        self.add_callback(Stop())

    lt.LLaVATrainer.__init__ = init


def args(model: str, data: str, videos: str, out: str, ds: str) -> list[str]:
    return [
        "--model_name_or_path", model, "--version", "qwen_1_5", "--data_path", data,
        "--video_folder", videos, "--image_folder", videos, "--vision_tower", "tiny-org/tiny-siglip-patch14-384",
        "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-2", "--mm_use_im_start_end", "False",
        "--mm_use_im_patch_token", "False", "--mm_patch_merge_type", "spatial_unpad",
        "--mm_newline_position", "one_token", "--mm_spatial_pool_mode", "bilinear",
        "--image_aspect_ratio", "anyres_max_9", "--image_grid_pinpoints", "[[384, 384], [384, 768]]",
        "--frames_upbound", "4", "--mm_tunable_parts", "mm_mlp_adapter,video_compressor,mm_language_model",
        "--video_compressor", json.dumps(SPEC), "--video_compressor_lr", "3e-3", "--mm_projector_lr", "2e-3",
        "--learning_rate", "1e-3", "--output_dir", out, "--max_steps", str(STEPS),
        "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1", "--save_strategy", "steps",
        "--save_steps", str(SAVE_EVERY), "--logging_steps", "1", "--report_to", "none", "--model_max_length", "2048",
        "--dataloader_num_workers", "0", "--lazy_preprocess", "True", "--attn_implementation", "sdpa",
        # LLaVA-NeXT casts the vision tower to fp16 unless bf16 is on; DeepSpeed's bf16 runs on the CPU
        "--bf16", "True", "--deepspeed", ds, "--group_by_modality_length", "False", "--seed", "0",
    ]


def main(hub, model, data, videos, out, ds, stop) -> None:
    from llava_vqtoken.hosts.llava_next.tiny import use_offline_cache

    use_offline_cache(hub)
    import llava_vqtoken.train.llava_next as T

    T.patch_training()
    if int(stop):
        stop_after(int(stop))
    T.main(args(model, data, videos, out, ds))


if __name__ == "__main__":
    main(*sys.argv[1:8])
