"""The README's commands are recipes for what they say: its evaluate command runs as written on a CamVid-style
folder, and no command pairs a real checkpoint with the demo's settings."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
from PIL import Image

from paka_hf.apps.demo import save_random_model
from paka_hf.commands import evaluate as evaluate_command
from paka_hf.evaluation.datasets import CAMVID_CLASSES
from paka_hf.testing import tiny_dinov2_config

REPO_ROOT = Path(__file__).resolve().parents[1]
CAMVID_VOID = 11


def readme_commands(program: str, page: str = "README.md", inline: bool = False) -> list[list[str]]:
    """Every command line of ``page`` that runs ``program``, as argument lists (the program itself first): from its
    ``bash`` blocks (continuation lines joined, comments dropped) and, with ``inline``, its inline code spans that
    give the program arguments."""
    text = (REPO_ROOT / page).read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    if inline:
        lines += [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", prose) if f"{program} " in span]
    commands = []
    for line in lines:
        words = shlex.split(line, comments=True) if program in line else []
        if program in words:
            commands.append(words[words.index(program) :])
    return commands


def write_camvid_style_folder(root: Path, count: int = 2) -> None:
    """``root/{train,val}/{images,masks}`` as CamVid ships it: 480 x 360 photos' shape scaled down, masks of class
    ids 0..10 with void (11) pixels, and ``root/classes.txt`` with CamVid's eleven names."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(count):
            mask = (np.arange(48)[None, :] // 5 + np.arange(36)[:, None] // 12).astype(np.uint8) % 11
            mask[:4, :] = CAMVID_VOID  # CamVid's void label
            image = rng.integers(0, 255, (36, 48, 3), dtype=np.uint8)
            image[..., 0] = (mask * 23).astype(np.uint8)  # the classes look different
            Image.fromarray(image).save(root / split / "images" / f"0001TP_{i:06d}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"0001TP_{i:06d}.png")
    (root / "classes.txt").write_text("\n".join(CAMVID_CLASSES) + "\n")


def test_the_readme_evaluate_command_runs_as_written_on_a_camvid_style_folder(tmp_path, monkeypatch, capsys):
    """The first evaluate command of the README (the post-trained model's), copied as written, on a
    CamVid-layout folder with void = 11 and a tiny random-init model where the README's model folder is."""
    command = readme_commands("scripts/evaluate.py")[0]
    argv = command[1:]
    assert "--ignore_index" in argv  # without it CamVid's void pixels (11) are an unknown label
    options = dict(zip(argv[::2], argv[1::2]))
    monkeypatch.chdir(tmp_path)
    save_random_model(tmp_path / options["--model_name_or_path"], tiny_dinov2_config())
    write_camvid_style_folder(tmp_path / options["--data_dir"])

    result = evaluate_command.main(argv)

    saved = json.loads((tmp_path / options["--output_file"]).read_text())
    assert saved == result and saved["model"] == options["--model_name_or_path"]
    names = [entry["metric_name"] for entry in saved["results"]]
    assert names[0] == "mIoU (linear)" and names[-1] == "mIoU (hummingbird)"
    assert all(0.0 <= entry["value"] <= 100.0 for entry in saved["results"])
    assert "error" not in capsys.readouterr().err


def test_the_readme_evaluates_the_model_and_its_base_into_the_output_folder_the_card_reads():
    """The model card picks up ``OUTPUT_DIR/eval_results*.json``: both README evaluations write there."""
    commands = readme_commands("scripts/evaluate.py")
    outputs = [dict(zip(c[1::2], c[2::2]))["--output_file"] for c in commands]
    assert len(commands) == 2 and all(re.fullmatch(r"out/my_paka/eval_results\w*\.json", o) for o in outputs)


def test_no_readme_command_pairs_a_real_checkpoint_with_the_demo_config():
    """configs/demo.yaml (settings for the tiny random-init demo model) appears, in the README and the docs, only
    without a model override, so with the demo's own model; the README's CPU training runs through plain python
    (all cores)."""
    pages = ["README.md", *(str(p.relative_to(REPO_ROOT)) for p in sorted((REPO_ROOT / "docs").glob("*.md")))]
    trainings = [words for page in pages for words in readme_commands("scripts/train.py", page, inline=True)]
    assert any("configs/demo.yaml" in words for words in trainings)
    for words in trainings:
        if "configs/demo.yaml" in words:
            assert "--model_name_or_path" not in words, words
    text = (REPO_ROOT / "README.md").read_text()
    assert "python scripts/train.py --config configs/cpu_vits14.yaml" in text


def test_every_readme_training_command_names_files_that_exist_and_parses():
    """Each `scripts/train.py` command of the README (the FSDP2 one included) names an Accelerate config and a
    training config that exist, and its flags parse into a PaKAConfig."""
    from paka_hf.commands.train import parse_config_and_origins

    text = (REPO_ROOT / "README.md").read_text()
    launch_configs = re.findall(r"--config_file (\S+)", text)
    assert "configs/accelerate/fsdp_8gpu.yaml" in launch_configs
    assert all((REPO_ROOT / path).is_file() for path in launch_configs), launch_configs
    for words in readme_commands("scripts/train.py"):
        arguments = dict(zip(words[1::2], words[2::2]))
        assert (REPO_ROOT / arguments["--config"]).is_file(), words
        argv = [w if w != arguments["--config"] else str(REPO_ROOT / w) for w in words[1:]]
        argv += ["--bf16", "false"]  # the GPU recipes ask for bf16, which this CPU cannot give
        config, _ = parse_config_and_origins(argv)
        assert config.output_dir == arguments["--output_dir"]
