//! Where a model lives: the `modelUrl` argument of `Engine.load` resolved to file URLs.

use tern::{Error, Result};

/// The Hugging Face hub, as the native `HF_ENDPOINT` default.
pub const HUB_ENDPOINT: &str = "https://huggingface.co";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelLocation {
    /// A single GGUF file.
    Gguf { url: String },
    /// A Hugging Face style directory: `base` + `/config.json`, `/model.safetensors`, ...
    Directory { base: String },
}

impl ModelLocation {
    /// Resolves `model`: an absolute or relative URL (`https://…`, `/models/x`, `./x`) of a model
    /// directory or a `.gguf` file, a hub repo id `owner/name`, or a GGUF inside a hub repo
    /// `owner/name/file.gguf`. Hub names are served from `hub_endpoint`.
    pub fn resolve(model: &str, hub_endpoint: &str) -> Result<Self> {
        let model = model.trim();
        let is_url = model.contains("://")
            || model.starts_with('/')
            || model.starts_with("./")
            || model.starts_with("../")
            || model.starts_with("blob:");
        let location = if is_url {
            let url = model.trim_end_matches('/').to_string();
            if path_of(&url).ends_with(".gguf") {
                Self::Gguf { url }
            } else {
                Self::Directory { base: url }
            }
        } else {
            let parts: Vec<&str> = model.split('/').collect();
            if parts.len() < 2 || !parts.iter().all(|p| is_hub_name(p)) {
                return Err(Error::Invalid(format!(
                    "model {model:?} is neither a URL nor a Hugging Face repo id (owner/name); \
                     write ./{model} for a URL relative to the page"
                )));
            }
            let repo = format!(
                "{}/{}/{}/resolve/main",
                hub_endpoint.trim_end_matches('/'),
                parts[0],
                parts[1]
            );
            match &parts[2..] {
                [] => Self::Directory { base: repo },
                [.., file] if file.ends_with(".gguf") => Self::Gguf {
                    url: format!("{repo}/{}", parts[2..].join("/")),
                },
                _ => {
                    return Err(Error::Invalid(format!(
                        "model {model:?}: inside a hub repo only a .gguf file can be named"
                    )))
                }
            }
        };
        Ok(location)
    }

    /// The URL of `file` in a directory location.
    pub fn file_url(base: &str, file: &str) -> String {
        format!("{base}/{file}")
    }
}

/// The URL without its query and fragment.
fn path_of(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

fn is_hub_name(part: &str) -> bool {
    !part.is_empty()
        && !part.starts_with('.')
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

// Pure string handling: tested natively by `cargo test --workspace`.
#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    fn resolve(model: &str) -> Result<ModelLocation> {
        ModelLocation::resolve(model, "https://hub.test/")
    }

    fn dir(base: &str) -> ModelLocation {
        ModelLocation::Directory { base: base.into() }
    }

    fn gguf(url: &str) -> ModelLocation {
        ModelLocation::Gguf { url: url.into() }
    }

    #[test]
    fn urls_hub_ids_and_gguf_files() {
        let cases = [
            ("https://x.test/models/m/", dir("https://x.test/models/m")),
            ("/models/m", dir("/models/m")),
            ("./m", dir("./m")),
            (
                "https://x.test/m.gguf?download=1",
                gguf("https://x.test/m.gguf?download=1"),
            ),
            ("../m.gguf", gguf("../m.gguf")),
            (
                " microsoft/bitnet-b1.58-2B-4T ",
                dir("https://hub.test/microsoft/bitnet-b1.58-2B-4T/resolve/main"),
            ),
            (
                "owner/repo/q/m-i2_s.gguf",
                gguf("https://hub.test/owner/repo/resolve/main/q/m-i2_s.gguf"),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(resolve(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn rejects_what_is_neither() {
        for (input, want) in [
            ("", "neither"),
            ("model", "neither"),
            ("owner/a b", "neither"),
            ("owner/../x", "neither"),
            ("owner/repo/config.json", "only a .gguf"),
        ] {
            let e = resolve(input).unwrap_err().to_string();
            assert!(e.contains(want), "{input}: {e}");
        }
    }
}
