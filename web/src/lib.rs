//! Tern in the browser: the `tern` engine compiled to wasm32 behind a small JS API (built into
//! `web/pkg/tern.js` by `cargo xtask wasm`).
//!
//! ```js
//! import init, { Engine } from "./pkg/tern.js";
//! await init();
//! const engine = await Engine.load("microsoft/bitnet-b1.58-2B-4T", { onProgress: (loaded, total) => {} });
//! const ids = await engine.generateIds(new Uint32Array([1019, 72]), { maxNewTokens: 16 });
//! const reply = await engine.chat([{ role: "user", content: "Hi" }], { signal }, (text, id) => {});
//! ```

//!
//! Everything but [`location`] (model argument → file URLs, tested natively too) is wasm32-only:
//! the browser sources hold single-threaded JS handles, which the engine's native `Send + Sync`
//! source bound rightly rejects.

#[cfg(target_arch = "wasm32")]
pub mod cache;
#[cfg(target_arch = "wasm32")]
mod engine;
#[cfg(target_arch = "wasm32")]
pub mod fetch;
#[cfg(target_arch = "wasm32")]
mod http;
#[cfg(target_arch = "wasm32")]
pub mod loader;
pub mod location;
#[cfg(target_arch = "wasm32")]
pub mod range;

#[cfg(target_arch = "wasm32")]
pub use engine::Engine;
