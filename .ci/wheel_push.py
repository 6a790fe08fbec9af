"""Push an output folder with the installed ``paka-push`` to the loopback Hub stand-in and check what arrived.

Run by .ci/wheel_smoke.sh with the wheel's virtual environment: ``python wheel_push.py TESTS_DIR OUT REPO_ID PAKA_PUSH``.
Only ``TESTS_DIR`` (for ``hub_server``) goes on ``sys.path``, so ``paka_hf`` still comes from the installed wheel.
The stand-in runs in this process; ``paka-push`` runs as a subprocess pointed at it with ``HF_ENDPOINT``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def main() -> None:
    tests_dir, out, repo_id, paka_push = sys.argv[1:5]
    sys.path.insert(0, tests_dir)
    from hub_server import HubStandIn  # tests/hub_server.py: stdlib HTTP server on 127.0.0.1

    token = "hf_standin_write_token"  # the write token HubStandIn accepts by default
    with HubStandIn(max_lifetime_s=300) as stand_in:
        env = dict(
            os.environ,
            HF_ENDPOINT=stand_in.url,
            HF_TOKEN=token,
            HF_HUB_OFFLINE="0",
            HF_HUB_DISABLE_XET="1",  # the stand-in speaks classic Git-LFS, not Xet
            HF_HOME=str(Path(out).resolve().parent / "hf_home"),
        )
        subprocess.run([paka_push, out, "--repo_id", repo_id], env=env, check=True)
        repo = stand_in.repos.get(repo_id)
        if repo is None:
            sys.exit(f"paka-push finished but the stand-in has no repository {repo_id}")
        head = repo.resolve("main")
        files = set(head.files) if head is not None else set()
        for name in ("README.md", "config.json", "model.safetensors", "preprocessor_config.json"):
            if name not in files:
                sys.exit(f"{name} missing from the pushed repository (has {sorted(files)})")
        print(f"pushed {len(files)} files to {stand_in.url}/{repo_id}")


if __name__ == "__main__":
    main()
