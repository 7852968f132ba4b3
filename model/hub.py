"""Hugging Face Hub names -> local folders, through huggingface_hub's own cache.

`resolve_model_dir("Qwen/Qwen2.5-1.5B")` downloads (or finds in the cache) only the files a model
directory needs here: safetensors weights, config and tokenizer files, never code. An existing
local path is returned as it is and huggingface_hub is not imported. The hub client's own
settings apply: `HF_HOME` / `HF_HUB_CACHE` (where the cache is), `HF_HUB_OFFLINE=1` (cache only,
no network), `HF_TOKEN` (gated models).
"""
import os
import re

MODEL_FILES = ["*.safetensors", "model.safetensors.index.json", "config.json", "generation_config.json",
               "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
               "chat_template.json"]
# owner/name or a bare name: letters, digits, '-', '_', '.' (the hub's own rule for repo ids)
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(?:/[A-Za-z0-9][\w.-]{0,95})?")


class HubError(RuntimeError):
    """A hub name that cannot be resolved: one line saying what to install or download."""


def looks_like_repo_id(name):
    return bool(_REPO_ID.fullmatch(name)) and ".." not in name and not name.endswith((".", "-"))


def snapshot(repo_id, allow_patterns, repo_type="model", revision=None):
    """Local folder of repo_id's files matching allow_patterns (downloaded unless cached)."""
    kind = "dataset" if repo_type == "dataset" else "model"
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise HubError(f"{kind} '{repo_id}' comes from the Hugging Face Hub, and huggingface_hub is not "
                       "installed: pip install huggingface_hub") from None
    try:
        return snapshot_download(repo_id, repo_type=repo_type, revision=revision, allow_patterns=allow_patterns)
    except LocalEntryNotFoundError as e:
        how = ("HF_HUB_OFFLINE is set: download it once with network access"
               if constants.HF_HUB_OFFLINE else "the hub could not be reached")
        command = f"hf download {repo_id}" + (" --repo-type dataset" if kind == "dataset" else "")
        raise HubError(f"{kind} '{repo_id}' is not (completely) in the hub cache {constants.HF_HUB_CACHE} "
                       f"and {how} (`{command}`, or set HF_HOME to where a copy is)") from e
    except (HfHubHTTPError, ValueError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HubError(f"{kind} '{repo_id}': {first_line}") from e


def resolve_model_dir(name_or_path):
    """A local model directory for a path or a hub name (see the module docstring)."""
    name = str(name_or_path)
    if os.path.exists(name):
        return name
    if not looks_like_repo_id(name):
        raise HubError(f"'{name}': no such local path, and not a hub name of the form owner/name")
    try:
        folder = snapshot(name, MODEL_FILES)
    except HubError as e:
        raise HubError(f"'{name}' is not a local path; as a hub name: {e}") from e.__cause__
    if not os.path.exists(os.path.join(folder, "config.json")):
        raise HubError(f"model '{name}': the snapshot at {folder} has no config.json "
                       "(not a model repository, or not a transformers layout)")
    return folder
