"""FSDP2: when a run is sharded or refused, the checkpoint layout checks, and (slow, two gloo processes launched as a
user would) FSDP2 against DDP, a shard-local EMA step, exact resume and export, for DINOv2 and DINOv3, full and LoRA."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from paka_hf.training.checkpoints import UNSHARDED, check_checkpoint_layout, mark_checkpoint_complete
from paka_hf.training.fsdp import FSDP_ENV, fsdp_plan
from paka_hf.utils.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).parent / "accelerate"
CASES = ("dinov2", "dinov2_lora", "dinov3", "dinov3_lora", "dinov2_checkpointed", "dinov2_accumulated")


def no_plugin():
    return SimpleNamespace(state=SimpleNamespace(fsdp_plugin=None))


@pytest.fixture
def config(tmp_path):
    from paka_hf.testing import tiny_run_config

    return tiny_run_config(tmp_path / "out", tmp_path / "model", tmp_path / "images")


@pytest.fixture
def fsdp_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("FSDP_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv(FSDP_ENV, "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    return monkeypatch


def test_a_run_that_does_not_ask_for_fsdp_is_not_sharded(config, monkeypatch):
    monkeypatch.delenv(FSDP_ENV, raising=False)
    assert fsdp_plan(config, no_plugin()) is None


def test_accelerates_fsdp_request_is_read_on_a_cpu_too(config, fsdp_env):
    """accelerate launch --use_fsdp sets the environment; Accelerate itself ignores it on a CPU: PaKA does not."""
    fsdp_env.setenv("FSDP_RESHARD_AFTER_FORWARD", "false")
    plan = fsdp_plan(config, no_plugin())
    assert plan is not None and plan.world_size == 1 and plan.device_type == "cpu"
    assert plan.settings.reshard_after_forward is False and plan.settings.param_dtype is None
    assert plan.summary()["strategy"] == "FSDP2" and plan.summary()["mesh"] == [1]
    assert "FSDP2 over a mesh of 1 cpu" in plan.describe()


@pytest.mark.parametrize(
    "setting, value, message",
    [
        ("FSDP_VERSION", "1", "FSDP version 1 is not supported.*fsdp_version: 2"),
        ("FSDP_OFFLOAD_PARAMS", "true", "fsdp_offload_params is not supported"),
        ("FSDP_STATE_DICT_TYPE", "FULL_STATE_DICT", "FULL_STATE_DICT is not supported"),
    ],
)
def test_an_fsdp_setting_paka_does_not_honour_stops_the_run_in_one_line(config, fsdp_env, setting, value, message):
    fsdp_env.setenv(setting, value)
    with pytest.raises(ConfigError, match=message) as caught:
        fsdp_plan(config, no_plugin())
    assert "\n" not in str(caught.value)


def test_fp16_and_torch_compile_under_fsdp_are_refused(tmp_path, fsdp_env):
    from paka_hf.testing import tiny_run_config

    compiled = tiny_run_config(tmp_path / "out", tmp_path / "model", tmp_path / "images", torch_compile=True)
    with pytest.raises(ConfigError, match="torch_compile under FSDP"):
        fsdp_plan(compiled, no_plugin())
    # fp16 needs a GPU to make a PaKAConfig: the fields fsdp_plan reads
    half = SimpleNamespace(fp16=True, bf16=False, torch_compile=False, world_size=1, device=torch.device("cpu"))
    with pytest.raises(ConfigError, match="set bf16: true"):
        fsdp_plan(half, no_plugin())


def test_bf16_under_fsdp_computes_in_bf16_and_reduces_in_fp32(tmp_path, fsdp_env):
    from paka_hf.testing import tiny_run_config

    config = tiny_run_config(tmp_path / "out", tmp_path / "model", tmp_path / "images", bf16=True)
    plan = fsdp_plan(config, no_plugin())
    assert plan.settings.param_dtype is torch.bfloat16 and plan.settings.reduce_dtype is torch.float32
    assert plan.summary()["param_dtype"] == "bfloat16"


@pytest.mark.parametrize("name", ["fsdp_8gpu.yaml", "fsdp_multinode.yaml"])
def test_the_fsdp_launch_configs_ask_for_fsdp2_with_settings_paka_honours(config, fsdp_env, name):
    """accelerate launch turns the config's fsdp_config into FSDP_* variables (fsdp_version -> FSDP_VERSION)."""
    from accelerate.commands.config.config_args import load_config_from_file

    cluster = load_config_from_file(str(REPO_ROOT / "configs" / "accelerate" / name))
    assert cluster.distributed_type == "FSDP" and cluster.mixed_precision == "bf16"
    for key, value in cluster.fsdp_config.items():
        fsdp_env.setenv(key.upper(), str(value).lower() if isinstance(value, bool) else str(value))
    plan = fsdp_plan(config, no_plugin())
    assert plan is not None and plan.settings.reshard_after_forward and not plan.activation_checkpointing


def test_a_resume_with_another_process_count_or_sharding_stops_in_one_line(tmp_path):
    folder = tmp_path / "checkpoint-2"
    folder.mkdir()
    mark_checkpoint_complete(folder, global_step=2, world_size=2, num_workers=0, sharding="FSDP2")
    check_checkpoint_layout(folder, world_size=2, sharding="FSDP2")
    with pytest.raises(ConfigError, match=r"written by 2 process\(es\) and this run has 1.*--num_processes 2"):
        check_checkpoint_layout(folder, world_size=1, sharding="FSDP2")
    with pytest.raises(ConfigError, match="written under FSDP2 and this run is launched without FSDP"):
        check_checkpoint_layout(folder, world_size=2, sharding=UNSHARDED)
    # a marker from before the key existed: an unsharded checkpoint
    (folder / "paka_checkpoint_complete.json").write_text(json.dumps({"global_step": 2, "world_size": 2}))
    check_checkpoint_layout(folder, world_size=2, sharding=UNSHARDED)


# ---------------------------------------------------------------------------------------------
# two processes: FSDP2 against DDP
# ---------------------------------------------------------------------------------------------


def launch(mode: str, assets: Path, out: Path, port: int, *extra: str, env=None) -> subprocess.CompletedProcess:
    flags = ["--multi_gpu"] if mode == "ddp" else ["--use_fsdp", "--fsdp_version", "2"]
    command = [
        str(ACCELERATE),
        "launch",
        *flags,
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
        str(REPO_ROOT / "tests" / "fsdp_worker.py"),
        str(assets),
        str(out),
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    return subprocess.run(command, cwd=out.parent, capture_output=True, text=True, timeout=900, env=env)


def write_assets(assets: Path) -> Path:
    from paka_hf.apps.demo import save_random_model
    from paka_hf.testing import tiny_dinov2_config, tiny_family_config, write_random_images

    save_random_model(assets / "dinov2" / "model", tiny_dinov2_config(registers=2), seed=0, image_processor=False)
    save_random_model(assets / "dinov3" / "model", tiny_family_config("dinov3_vit"), seed=0, image_processor=False)
    write_random_images(assets / "images", 16, (80, 96), seed=0)
    return assets


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The worker's exports under DDP and FSDP2, for every case (one launch each)."""
    if shutil.which("accelerate", path=str(ACCELERATE.parent)) is None:
        pytest.skip("accelerate CLI not installed")
    root = tmp_path_factory.mktemp("fsdp")
    assets = write_assets(root / "assets")
    outputs = {}
    for mode, port in (("ddp", 29531), ("fsdp", 29533)):
        out = root / mode
        out.mkdir()
        result = launch(mode, assets, out, port)
        # gloo sometimes aborts at interpreter exit after the work is done (docs/STACK.md): judge by what was written
        assert (out / CASES[-1] / "resumed" / "model.safetensors").is_file(), result.stderr[-4000:]
        outputs[mode] = (out, result)
    return outputs


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_fsdp2_trains_the_same_student_and_teacher_as_ddp(runs, case):
    """Same seed, data and fp32 steps: FSDP2's student and teacher equal DDP's. They differ only in the order of
    the float sums of the gradient reduction (all-reduce against reduce-scatter) and of the clipping norm: a few
    units of float32's 1.2e-7 relative precision per step (measured: at most 2.7e-7 over these cases, 0 for
    DINOv2 LoRA). 1e-6 is 0.1 % of one step of learning rate 1e-3, far below what any difference in data,
    momentum or update order gives (the trained tensors move by ~1e-3 per step)."""
    ddp, fsdp = runs["ddp"][0] / case, runs["fsdp"][0] / case
    for network in ("student", "teacher"):
        expected, got = weights(ddp / network), weights(fsdp / network)
        assert expected.keys() == got.keys()
        worst = max((expected[k] - got[k]).abs().max().item() for k in expected)
        assert worst < 1e-6, f"{case} {network}: max |DDP - FSDP2| = {worst:.3g}"
    start = weights(runs["fsdp"][0].parent / "assets" / case.split("_")[0] / "model")
    trained = weights(fsdp / "student")
    assert max((trained[k] - start[k]).abs().max().item() for k in start) > 1e-4  # it did train
    if case.endswith("_lora"):  # merged weights and the adapter, as unsharded LoRA runs export
        assert (fsdp / "student" / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_the_ema_step_under_fsdp2_issues_no_collective(runs, case):
    for rank in (0, 1):
        counts = json.loads((runs["fsdp"][0] / case / f"collectives_rank{rank}.json").read_text())
        assert len(counts["ema"]) == 4 and counts["ema"] == [0, 0, 0, 0]
        assert counts["forward"] > 0  # the counter sees the all-gathers of a sharded forward


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_a_resumed_fsdp2_run_exports_the_uninterrupted_runs_student_bit_for_bit(runs, case):
    out = runs["fsdp"][0] / case
    resumed, uninterrupted = weights(out / "resumed"), weights(out / "student")
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


@pytest.mark.slow
def test_fsdp2_checkpoints_hold_every_processes_shards_under_the_marker_and_the_summary_says_fsdp2(runs):
    out, result = runs["fsdp"]
    checkpoint = out / "dinov3" / "run" / "checkpoint-4"
    marker = json.loads((checkpoint / "paka_checkpoint_complete.json").read_text())
    assert marker["sharding"] == "FSDP2" and marker["world_size"] == 2
    for shards in ("model_shards", "optimizer_shards"):
        assert sorted(p.name for p in (checkpoint / shards).iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert not (checkpoint / "model.safetensors").exists()
    summary = json.loads((out / "dinov3" / "student" / "training_summary.json").read_text())
    assert summary["parallelism"]["strategy"] == "FSDP2" and summary["parallelism"]["mesh"] == [2]
    assert "FSDP2 over a mesh of 2 cpu process(es)" in result.stderr
    ddp_summary = json.loads((runs["ddp"][0] / "dinov3" / "student" / "training_summary.json").read_text())
    assert ddp_summary["parallelism"] == {"strategy": "DDP", "processes": 2}


@pytest.mark.slow
def test_the_fsdp2_export_loads_with_automodel_and_no_custom_code(runs):
    from transformers import AutoModel

    for case in ("dinov3", "dinov3_lora"):
        folder = runs["fsdp"][0] / case / "student"
        model, info = AutoModel.from_pretrained(folder, output_loading_info=True)
        assert type(model).__name__ == "DINOv3ViTModel"
        assert not info["missing_keys"] and not info["unexpected_keys"]  # every tensor came from the file
        assert len(model.state_dict()) == len(weights(folder))
        assert torch.isfinite(model(pixel_values=torch.randn(1, 3, 64, 64)).last_hidden_state).all()


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("accelerate", path=str(ACCELERATE.parent)) is None, reason="accelerate CLI not installed"
)
def test_an_fsdp2_run_pushes_every_save_and_the_end_with_every_process_taking_part(tmp_path):
    """Each push of a sharded run needs every process (the export gathers the sharded tensors first): the pushes
    happen, nothing hangs, and the Hub holds the run's export. Every process of the training program leaves its
    process group before it exits: one that exits with it alive can abort in the interpreter's shutdown, and the
    launcher then stops process zero in the middle of the final push."""
    from hub_helpers import TOKEN
    from hub_server import HubStandIn

    repo = "paka-org/fsdp-tiny"
    assets = write_assets(tmp_path / "assets")
    out = tmp_path / "fsdp"
    out.mkdir()
    with HubStandIn(max_lifetime_s=300) as server:
        env = {
            "HF_ENDPOINT": server.url,
            "HF_HUB_OFFLINE": "0",
            "HF_HOME": str(tmp_path / "hf_home"),
            "HF_TOKEN": TOKEN,
            "HF_HUB_DISABLE_XET": "1",
        }
        result = launch("fsdp", assets, out, 29535, "push", repo, env=env)
        assert (out / "run" / "model.safetensors").is_file(), result.stderr[-4000:]
        titles = [commit.title for commit in server.repos[repo].history("main")]
        files = server.snapshot(repo)
    assert titles == [
        "End of training",
        "Training in progress, step 4",
        "Training in progress, step 2",
        "initial commit",
    ], f"rc {result.returncode}\n{result.stderr[-4000:]}"  # the workers' own account of a missing push
    assert files["model.safetensors"] == (out / "run" / "model.safetensors").read_bytes()
    assert [json.loads((out / f"process_group_alive_rank{rank}.json").read_text()) for rank in (0, 1)] == [False] * 2


@pytest.mark.slow
def test_one_process_asking_for_fsdp_is_sharded_and_a_save_that_dies_leaves_no_resumable_checkpoint(tmp_path):
    """Plain python with ACCELERATE_USE_FSDP=true: a mesh of one process. The second save dies between the model's
    and the optimizer's shards: that folder has no marker, and the resume takes the first checkpoint and finishes."""
    assets = write_assets(tmp_path / "assets")
    out = tmp_path / "single"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), FSDP_ENV: "true", "FSDP_VERSION": "2"}
    env.pop("WORLD_SIZE", None)

    def run(mode: str) -> subprocess.CompletedProcess:
        worker = str(REPO_ROOT / "tests" / "fsdp_worker.py")
        command = [sys.executable, worker, str(assets), str(out), mode]
        return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)

    crashed = run("crash")
    assert crashed.returncode != 0 and "killed while saving" in crashed.stderr
    assert "FSDP2 over a mesh of 1 cpu" in crashed.stderr
    assert (out / "run" / "checkpoint-4" / "model_shards").is_dir()  # torn: the model's shards, no marker
    assert not (out / "run" / "checkpoint-4" / "paka_checkpoint_complete.json").exists()
    assert (out / "run" / "checkpoint-2" / "paka_checkpoint_complete.json").is_file()
    resumed = run("resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((out / "run" / "training_summary.json").read_text())
    assert summary["global_step"] == 4 and summary["parallelism"]["mesh"] == [1]
    assert (out / "run" / "checkpoint-4" / "paka_checkpoint_complete.json").is_file()  # rewritten whole
