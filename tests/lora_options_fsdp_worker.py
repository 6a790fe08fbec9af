"""One process of tests/test_modeling_lora_options.py's FSDP2 check, launched by ``accelerate launch`` (DDP or FSDP2,
gloo on CPU): tests/fsdp_worker.py's run (4 steps, export of student and teacher, resume from step 2) with every LoRA
option at once, on DINOv2 (DoRA) and DINOv3 (rsLoRA).

``python lora_options_fsdp_worker.py ASSETS OUT`` writes ``OUT/<case>/student``, ``teacher``, ``resumed`` and
``collectives_rank<r>.json`` as tests/fsdp_worker.py does.
"""

import fsdp_worker

#: Every option: adapters in block 0 with its norms and layer scales, block 1 (the last) trained whole.
OPTIONS = dict(
    use_lora=True,
    lora_rank=4,
    learning_rate=1e-2,
    lora_variant="dora",
    lora_unfrozen_blocks=1,
    lora_train_norms=True,
    lora_learning_rate=2e-2,
    lora_weight_decay=0.01,
)
CASES = {
    "dinov2_options": ("dinov2", OPTIONS),
    "dinov3_options": ("dinov3", {**OPTIONS, "lora_variant": "rslora"}),
}

if __name__ == "__main__":
    fsdp_worker.CASES = CASES
    fsdp_worker.main()
