r"""Publish a PaKA training output folder to the Hugging Face Hub in one commit.

Uploads exactly model.safetensors, config.json, preprocessor_config.json, README.md (the model card,
rendered now from the folder, the training configuration and the evaluation results; a README.md of
your own in the folder is neither uploaded nor overwritten), pictures/*.png (from scripts/visualize.py)
and training_config.yaml (token-like values redacted; a local base folder is published as its Hub id,
or as null when none is known: the card then says it started from a local checkpoint, and --base_model
names it). Nothing else in the folder (checkpoints, optimizer state, logs, pickles) is uploaded, and
remote files the export does not contain are deleted in the same commit: the repository then holds exactly this export. The push is a single commit: if it
fails, the repository is left exactly as it was (a repository the push created is deleted again).
Transient HTTP errors are retried with back-off.

Visibility: without --private a new repository gets the namespace's default visibility; with --private
it is created private, and an existing public repository stops the push. A push never changes the
visibility of an existing repository.

Evaluation results go on the card only for the model they measured (same weights, or same folder / Hub
id) and its base; any other file, or two files measuring the same metric for one model, stops the push.

Authentication: run `hf auth login` once, or set HF_TOKEN to a token with write access. There is
deliberately no --token option (command lines are visible to other users of the machine).
Set HF_ENDPOINT to push to another Hub deployment.

Everything that can be checked without the Hub is checked before the first upload: the export files, the
card and its results and, with --space, the Space's files and the Hub ids it loads (a base that is a local
folder with no known Hub id needs --base_model); a push that cannot finish uploads nothing.

Examples (``paka-push`` is the same command):
    python scripts/push_to_hub.py out/ --repo_id my-org/dinov2-paka
    python scripts/push_to_hub.py out/ --repo_id my-org/dinov2-paka --private \
        --eval_results eval_base.json eval_paka.json --revision experiment-1
    python scripts/push_to_hub.py out/ --repo_id my-org/dinov2-paka --dry_run   # card + file list only
"""

from __future__ import annotations

import argparse

from paka_hf import hub
from paka_hf.commands import StrictArgumentParser
from paka_hf.commands.cli import configure_logging, run_script
from paka_hf.utils.errors import ConfigError, MissingPathError, PaKAUserError
from paka_hf.utils.paths import check_local_path


def build_parser() -> argparse.ArgumentParser:
    """The strict parser of ``push_to_hub.py`` / ``paka-push``; its description and epilog are this module's
    docstring.

    Returns:
        The parser.
    """
    parser = StrictArgumentParser(
        prog="push_to_hub.py",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "output_dir", metavar="OUTPUT_DIR", help="training output folder (written by scripts/train.py)"
    )
    parser.add_argument("--repo_id", "--repo-id", required=True, metavar="ORG/NAME", help="target model repository")
    parser.add_argument(
        "--private",
        action="store_const",
        const=True,
        default=None,
        help="create the repository private; refuse to push if it exists and is public "
        "(default: a new repository gets the namespace's default visibility)",
    )
    parser.add_argument(
        "--eval_results",
        "--eval-results",
        nargs="+",
        default=[],
        metavar="JSON",
        help="evaluation results from scripts/evaluate.py, base and adapted model alike "
        "(default: OUTPUT_DIR/eval_results*.json)",
    )
    parser.add_argument("--revision", metavar="BRANCH", help="branch to commit to (created if missing; default main)")
    parser.add_argument(
        "--commit_message",
        "--commit-message",
        default=hub.DEFAULT_COMMIT_MESSAGE,
        help=f"commit title (default: {hub.DEFAULT_COMMIT_MESSAGE!r})",
    )
    parser.add_argument(
        "--license",
        default=None,
        help="license in the card metadata (default: the base model family's, e.g. apache-2.0 for DINOv2, "
        "other/dinov3-license for DINOv3)",
    )
    parser.add_argument(
        "--base_model",
        "--base-model",
        metavar="HUB_ID",
        help="base model for the card metadata (default: model_name_or_path of training_config.yaml)",
    )
    parser.add_argument(
        "--dry_run",
        "--dry-run",
        action="store_true",
        help="print what would be uploaded and the model card, without contacting the Hub or writing anything",
    )
    # The feature explorer as a Gradio Space next to the model (paka_hf.apps.space).
    parser.add_argument(
        "--space",
        nargs="?",
        const="",
        default=None,
        metavar="ORG/NAME",
        help="also create a Gradio Space with the feature explorer (default id: REPO_ID-explorer) "
        "and link it from the model card",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Push a training output folder (and, with ``--space``, the explorer Space), or show what would be pushed.

    Everything that can be checked without the Hub is checked before the first upload.

    Args:
        argv: the command-line arguments; ``sys.argv[1:]`` when ``None``.

    Returns:
        0 after the push, or after printing the files and the model card with ``--dry_run``.

    Raises:
        MissingPathError: when OUTPUT_DIR or a file the push needs is missing.
        ConfigError: for a bad option or a setting :mod:`paka_hf.hub` or :mod:`paka_hf.apps.space` refuses
            (e.g. ``--space`` with a base model that is not a Hub id).
    """
    args = build_parser().parse_args(argv)
    configure_logging()
    check_local_path(args.output_dir, "OUTPUT_DIR", always=True)
    # one set of card settings, so the dry run shows the card the push would upload
    card_options = dict(eval_results=args.eval_results, license=args.license, base_model=args.base_model)
    try:
        # Everything that can be known without the Hub is checked, and built, before the first upload: with
        # --space, the Space's files and the Hub ids it loads here; the export files and the card (with its
        # results) by push_to_hub before it contacts the Hub.
        space_plan = None
        if args.space is not None:
            from paka_hf.apps import space

            space_plan = space.plan_space_for_model(
                args.output_dir, args.repo_id, args.space or None, base_model=args.base_model
            )
        if args.dry_run:
            files = hub.collect_upload_files(args.output_dir)
            card = hub.render_model_card(args.output_dir, args.repo_id, **card_options)
            print(f"Would push to {args.repo_id} ({args.revision or 'main'}), deleting any other remote file:")
            for name in sorted([*files, hub.CARD_FILE]):
                print(f"  {name}")
            if space_plan is not None:
                shown = [name for name in sorted(space_plan.files) if not name.startswith("paka_hf/")]
                print(
                    f"Would push the Space {space_plan.space_id} ({space_plan.model_id} against its base "
                    f"{space_plan.base_id}): {', '.join(shown)} and {len(space_plan.files) - len(shown)} paka_hf "
                    "source files"
                )
            print(f"\n{hub.CARD_FILE} (the model card):\n\n{card.content}")
            return 0
        info = hub.push_to_hub(
            args.output_dir,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            commit_message=args.commit_message,
            **card_options,
        )
    except (FileNotFoundError, ValueError) as err:  # paka_hf.hub's own checks of the folder and settings
        if isinstance(err, PaKAUserError):
            raise
        raise (MissingPathError if isinstance(err, FileNotFoundError) else ConfigError)(str(err)) from err
    print(f"Pushed {args.repo_id}: {info.commit_url}")
    if space_plan is not None:  # the feature explorer Space, after the model it loads
        space_id, space_info = space.publish_space_for_model(
            args.output_dir, args.repo_id, plan=space_plan, private=args.private
        )
        print(f"Pushed Space {space_id}: {space_info.commit_url} (linked from the model card)")
    return 0


def cli_main() -> int:
    """The ``paka-push`` console command: :func:`main` with user errors as one line ``error: ...``, exit 2.

    Returns:
        The exit status (:func:`~paka_hf.commands.cli.run_script`).
    """
    return run_script(main)
