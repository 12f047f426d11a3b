"""Pre-trained weights from the local Hugging Face cache: offline unless downloads are asked for.

forgetbench never reaches the network for weights by default: a missing file is one WeightsError naming the
repository and files looked for, where, and how to get them. ``FORGETBENCH_ALLOW_DOWNLOAD=1`` (or
``--download`` on the command line) lets the Hugging Face client fetch what is missing.
"""
from __future__ import annotations

import os

from ..errors import WeightsError

ENV_ALLOW_DOWNLOAD = "FORGETBENCH_ALLOW_DOWNLOAD"


def downloads_allowed() -> bool:
    return os.environ.get(ENV_ALLOW_DOWNLOAD, "").strip().lower() in ("1", "true", "yes")


def hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def hf_weights_file(repo: str, filenames: list[str], what: str, alternative: str = "") -> str:
    """Local path of the first of ``filenames`` found for ``repo`` (downloading only when allowed)."""
    from huggingface_hub import hf_hub_download

    local_only = not downloads_allowed()
    problems = []
    for name in filenames:
        try:
            return hf_hub_download(repo_id=repo, filename=name, local_files_only=local_only)
        except Exception as e:  # not cached, no such file in the repo, no network: try the next name
            problems.append(type(e).__name__)
    if local_only:
        hint = (f"fetch them with `huggingface-cli download {repo} {filenames[0]}` (or rerun with --download / "
                f"{ENV_ALLOW_DOWNLOAD}=1)")
    else:
        hint = f"the download failed ({', '.join(sorted(set(problems)))})"
    also = f", or {alternative}" if alternative else ""
    raise WeightsError(f"no local weights for {what}: looked for {' or '.join(filenames)} of Hugging Face repo {repo} "
                       f"in {hf_cache_dir()}; {hint}{also}")
