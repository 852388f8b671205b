//! The model argument: a local directory, a local `.gguf` file, or a Hugging Face repo id
//! (`microsoft/bitnet-b1.58-2B-4T`, or `owner/name/file.gguf` for one GGUF file of a repo), downloaded
//! on first use into the standard Hugging Face cache (`HF_HOME`, default `~/.cache/huggingface`) with
//! a progress bar; interrupted downloads resume. `HF_ENDPOINT` points at a mirror (tests use a local
//! server that answers like the hub).

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};

use crate::{Error, Result};

/// Files of a safetensors model repo that are fetched when present.
const OPTIONAL_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
];

/// Returns a local path for `model`: itself when it exists on disk, else the downloaded repo.
pub fn resolve(model: &str, progress: bool) -> Result<PathBuf> {
    let path = Path::new(model);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    let parts: Vec<&str> = model.split('/').collect();
    let valid = |s: &str| !s.is_empty() && s != "." && s != "..";
    match parts.as_slice() {
        [owner, name] if valid(owner) && valid(name) => download_repo(&format!("{owner}/{name}"), progress),
        [owner, name, file @ ..] if valid(owner) && valid(name) && model.ends_with(".gguf") => {
            download_file(&repo(&format!("{owner}/{name}"), progress)?, &file.join("/"), model)
        }
        _ => Err(Error::Invalid(format!(
            "model `{model}`: no such file or directory, and not a Hugging Face repo id (owner/name)"
        ))),
    }
}

fn repo(repo_id: &str, progress: bool) -> Result<ApiRepo> {
    let api = ApiBuilder::from_env()
        .with_progress(progress)
        .build()
        .map_err(|e| Error::Download(format!("{repo_id}: {e}")))?;
    Ok(api.model(repo_id.to_string()))
}

fn download_file(repo: &ApiRepo, file: &str, repo_id: &str) -> Result<PathBuf> {
    repo.get(file)
        .map_err(|e| Error::Download(format!("{repo_id}: {file}: {}", describe(&e))))
}

/// `Ok(None)` when the hub says the file does not exist.
fn download_optional(repo: &ApiRepo, file: &str, repo_id: &str) -> Result<Option<PathBuf>> {
    match repo.get(file) {
        Ok(path) => Ok(Some(path)),
        Err(ApiError::RequestError(e)) if matches!(*e, ureq::Error::Status(404, _)) => Ok(None),
        Err(e) => Err(Error::Download(format!(
            "{repo_id}: {file}: {}",
            describe(&e)
        ))),
    }
}

fn describe(e: &ApiError) -> String {
    match e {
        ApiError::RequestError(inner) => match inner.as_ref() {
            ureq::Error::Status(401 | 403, _) => {
                "access denied (a gated repo needs a token: `huggingface-cli login` or HF_TOKEN)"
                    .into()
            }
            ureq::Error::Status(404, _) => "not found on the hub".into(),
            other => other.to_string(),
        },
        other => other.to_string(),
    }
}

/// Downloads config, tokenizer files and weights (single file or shards) and returns the snapshot
/// directory that holds them.
fn download_repo(repo_id: &str, progress: bool) -> Result<PathBuf> {
    let repo = repo(repo_id, progress)?;
    let config = download_file(&repo, "config.json", repo_id)?;
    for file in OPTIONAL_FILES {
        download_optional(&repo, file, repo_id)?;
    }
    if let Some(index) = download_optional(&repo, "model.safetensors.index.json", repo_id)? {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(index.display(), e))?;
        for shard in
            shard_files(&text).map_err(|msg| Error::format(index.display(), "weight_map", msg))?
        {
            download_file(&repo, &shard, repo_id)?;
        }
    } else {
        download_file(&repo, "model.safetensors", repo_id)?;
    }
    Ok(config
        .parent()
        .expect("a downloaded file lives in a snapshot directory")
        .to_path_buf())
}

/// The distinct shard file names of a `model.safetensors.index.json`, in first-seen order.
fn shard_files(index_json: &str) -> std::result::Result<Vec<String>, String> {
    let value: serde_json::Value = serde_json::from_str(index_json).map_err(|e| e.to_string())?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or("missing weight_map object")?;
    let mut shards: Vec<String> = Vec::new();
    for file in map.values() {
        let file = file
            .as_str()
            .ok_or("weight_map values must be file names")?;
        if file.contains("..") || file.starts_with('/') {
            return Err(format!("shard name `{file}` leaves the repository"));
        }
        if !shards.iter().any(|s| s == file) {
            shards.push(file.to_string());
        }
    }
    Ok(shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_are_deduplicated_and_confined() {
        let index = r#"{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors", "c": "model-00001-of-00002.safetensors"}}"#;
        assert_eq!(
            shard_files(index).unwrap(),
            [
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors"
            ]
        );
        assert!(shard_files(r#"{"weight_map": {"a": "../etc/passwd"}}"#).is_err());
        assert!(shard_files(r#"{"metadata": {}}"#).is_err());
    }

    #[test]
    fn rejects_what_is_neither_path_nor_repo_id() {
        assert!(resolve("no-such-dir-and-no-slash", false).is_err());
        assert!(resolve("a/b/c/not-gguf", false).is_err());
    }
}
