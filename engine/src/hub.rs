//! The model argument: a local directory, a local `.gguf` file, or a Hugging Face repo id
//! (`microsoft/bitnet-b1.58-2B-4T`, or `owner/name/file.gguf` for one GGUF file of a repo), downloaded
//! on first use into the standard Hugging Face cache (`HF_HOME`, default `~/.cache/huggingface`) with
//! a progress bar; interrupted downloads resume. `HF_ENDPOINT` points at a mirror (tests use a local
//! server that answers like the hub); `HF_HUB_OFFLINE=1` uses only what the cache already holds.
//!
//! What looks like a local path (a broken link, `./x`, `models/x` where `models/` exists) is never
//! tried as a repo id: a typo must not start a download. `hf:owner/name` forces the hub.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, CacheRepo};

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
    let forced = model.strip_prefix("hf:");
    let path = Path::new(model);
    if forced.is_none() {
        if path.exists() {
            return Ok(path.to_path_buf());
        }
        if let Some(why) = local_looking(path) {
            return Err(Error::Invalid(format!(
                "model `{model}`: no such file or directory ({why}; `hf:owner/name` names a \
                 Hugging Face repo explicitly)"
            )));
        }
    }
    let id = forced.unwrap_or(model);
    let parts: Vec<&str> = id.split('/').collect();
    let valid = |s: &str| !s.is_empty() && s != "." && s != "..";
    match parts.as_slice() {
        [owner, name] if valid(owner) && valid(name) => {
            download_repo(&Hub::open(&format!("{owner}/{name}"), progress)?)
        }
        [owner, name, file @ ..] if valid(owner) && valid(name) && id.ends_with(".gguf") => {
            Hub::open(&format!("{owner}/{name}"), progress)?.file(&file.join("/"))
        }
        _ => Err(Error::Invalid(format!(
            "model `{model}`: no such file or directory, and not a Hugging Face repo id (owner/name)"
        ))),
    }
}

/// Why `path`, which does not exist, reads as a local path rather than a repo id, if it does.
fn local_looking(path: &Path) -> Option<String> {
    let text = path.to_string_lossy();
    if std::fs::symlink_metadata(path).is_ok() {
        return Some("it is a broken symbolic link".into());
    }
    if path.is_absolute() || text.starts_with('.') || text.starts_with('~') || text.contains('\\') {
        return Some("it is written as a local path".into());
    }
    if text.ends_with(".safetensors") || text.ends_with(".json") {
        return Some("it names a local file".into());
    }
    let first = path.components().next()?;
    let first = Path::new(first.as_os_str());
    (path.components().count() > 1 && first.is_dir())
        .then(|| format!("`{}` is a local directory", first.display()))
}

/// `HF_HUB_OFFLINE` as huggingface_hub reads it: 1, true, yes or on.
fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// One repo of the hub, or of the local cache alone when offline.
enum Hub {
    Online { repo: ApiRepo, id: String },
    Offline { cache: CacheRepo, id: String },
}

impl Hub {
    fn open(repo_id: &str, progress: bool) -> Result<Hub> {
        let id = repo_id.to_string();
        if offline() {
            let cache = Cache::from_env().model(id.clone());
            return Ok(Hub::Offline { cache, id });
        }
        let api = ApiBuilder::from_env()
            .with_progress(progress)
            .build()
            .map_err(|e| Error::Download(format!("{repo_id}: {e}")))?;
        let repo = api.model(id.clone());
        Ok(Hub::Online { repo, id })
    }

    /// The local path of `file`, downloaded if needed.
    fn file(&self, file: &str) -> Result<PathBuf> {
        self.optional_file(file)?.ok_or_else(|| {
            let id = self.id();
            match self {
                Hub::Online { .. } => {
                    Error::Download(format!("{id}: {file}: not found on the hub"))
                }
                Hub::Offline { .. } => Error::Download(format!(
                    "{id}: {file}: not in the local cache, and HF_HUB_OFFLINE is set: download it \
                     once with the network on (unset HF_HUB_OFFLINE), or pass a local directory"
                )),
            }
        })
    }

    /// `Ok(None)` when the hub (or, offline, the cache) has no such file.
    fn optional_file(&self, file: &str) -> Result<Option<PathBuf>> {
        match self {
            Hub::Offline { cache, .. } => Ok(cache.get(file)),
            Hub::Online { repo, id } => match repo.get(file) {
                Ok(path) => Ok(Some(path)),
                Err(ApiError::RequestError(e)) if matches!(*e, ureq::Error::Status(404, _)) => {
                    Ok(None)
                }
                Err(e) => Err(Error::Download(format!("{id}: {file}: {}", describe(&e)))),
            },
        }
    }

    fn id(&self) -> &str {
        match self {
            Hub::Online { id, .. } | Hub::Offline { id, .. } => id,
        }
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
            ureq::Error::Transport(t) => {
                let endpoint = std::env::var("HF_ENDPOINT")
                    .unwrap_or_else(|_| "https://huggingface.co".into());
                format!(
                    "cannot reach {endpoint} ({t}). Check the network connection (or proxy), set \
                     HF_ENDPOINT to a reachable mirror, or pass a local model directory or .gguf \
                     file; HF_HUB_OFFLINE=1 uses only what is already downloaded"
                )
            }
            other => other.to_string(),
        },
        other => other.to_string(),
    }
}

/// Fetches config, tokenizer files and weights (single file or shards) and returns the snapshot
/// directory that holds them.
fn download_repo(hub: &Hub) -> Result<PathBuf> {
    let config = hub.file("config.json")?;
    for file in OPTIONAL_FILES {
        hub.optional_file(file)?;
    }
    if let Some(index) = hub.optional_file("model.safetensors.index.json")? {
        let text = crate::format::source::read_side_file(&index)?.unwrap_or_default();
        for shard in
            shard_files(&text).map_err(|msg| Error::format(index.display(), "weight_map", msg))?
        {
            hub.file(&shard)?;
        }
    } else {
        hub.file("model.safetensors")?;
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

    #[test]
    fn local_looking_paths_are_never_repo_ids() {
        // `src/` exists beside the crate's tests: `src/model` is a path, not a repo.
        let why = local_looking(Path::new("src/no-such-model")).unwrap();
        assert!(why.contains("`src` is a local directory"), "{why}");
        assert!(local_looking(Path::new("./x")).is_some());
        assert!(local_looking(Path::new("/no/such")).is_some());
        assert!(local_looking(Path::new("x/model.safetensors")).is_some());
        assert!(local_looking(Path::new("microsoft/bitnet-b1.58-2B-4T")).is_none());
        let err = resolve("src/no-such-model", false).unwrap_err().to_string();
        assert!(err.contains("no such file or directory"), "{err}");
        #[cfg(unix)]
        {
            let link =
                std::env::temp_dir().join(format!("tern-broken-link-{}", std::process::id()));
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink("/no/such/target", &link).unwrap();
            let why = local_looking(&link);
            std::fs::remove_file(&link).unwrap();
            assert!(why.unwrap().contains("broken symbolic link"));
        }
    }
}
