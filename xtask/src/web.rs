//! `cargo xtask web`: builds the browser package (as `cargo xtask wasm`) and serves the chat page on
//! 127.0.0.1 — `/www/` (web/www), `/pkg/` (web/pkg) and each local model under `/models/<name>`,
//! listed in `/models/index.json` so the page offers them first (the shipped trained model before
//! any other, random-weight test fixtures last and labelled as such). Files are served with HTTP Range
//! (206) and their MIME types (application/wasm, text/javascript); every request is logged to stdout
//! (the UI test counts model downloads from this log).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use tower_http::services::{ServeDir, ServeFile};

/// The trained model Tern ships (the CLI's default), relative to the workspace root.
const SHIPPED_MODEL: &str = "models/tern-pydoc-6m";

#[derive(clap::Args)]
pub struct Args {
    /// Port on 127.0.0.1 (0: any free port; the URL is printed). Not 8080, `tern serve`'s default,
    /// so both can run at once.
    #[arg(long, default_value_t = 8081)]
    port: u16,
    /// A model directory or .gguf file to serve (repeatable; default models/tern-pydoc-6m, the
    /// trained model Tern ships).
    #[arg(long)]
    model: Vec<PathBuf>,
    /// Serve the web/pkg already built instead of running `cargo xtask wasm` first.
    #[arg(long)]
    no_build: bool,
    /// With the build: skip wasm-opt (faster while developing).
    #[arg(long)]
    no_opt: bool,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let root = crate::wasm::workspace_root();
    if !args.no_build {
        crate::wasm::run(&crate::wasm::Args {
            no_opt: args.no_opt,
        })?;
    }
    let pkg = root.join("web/pkg");
    if !pkg.join("tern.js").is_file() {
        bail!(
            "{} is missing: run `cargo xtask wasm` (or drop --no-build)",
            pkg.join("tern.js").display()
        );
    }
    let models = if args.model.is_empty() {
        vec![root.join(SHIPPED_MODEL)]
    } else {
        args.model.clone()
    };
    let app = router(&root, &models)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener =
            tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, args.port)))
                .await
                .with_context(|| format!("binding 127.0.0.1:{}", args.port))?;
        let address = listener.local_addr()?;
        println!("serving the chat page at http://{address}/www/ (Ctrl-C stops)");
        axum::serve(listener, app).await?;
        anyhow::Ok(())
    })
}

/// The routes: the page, the package, the models and their index.
fn router(root: &Path, models: &[PathBuf]) -> anyhow::Result<Router> {
    let mut app = Router::new()
        .route("/", get(|| async { Redirect::temporary("/www/") }))
        .nest_service("/www", ServeDir::new(root.join("web/www")))
        .nest_service("/pkg", ServeDir::new(root.join("web/pkg")));
    let mut index: Vec<serde_json::Value> = Vec::new();
    for model in models {
        let name = model
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{}: not a usable model path", model.display()))?
            .to_string();
        let url = format!("/models/{name}");
        if index.iter().any(|m| m["url"] == url.as_str()) {
            bail!("two models are named {name}: rename one");
        }
        app = if model.is_dir() {
            app.nest_service(&url, ServeDir::new(model))
        } else if model.is_file() {
            app.route_service(&url, ServeFile::new(model))
        } else {
            bail!("{}: no such model directory or file", model.display());
        };
        println!("  model {} at {url}", model.display());
        let shipped = model.canonicalize().ok() == root.join(SHIPPED_MODEL).canonicalize().ok();
        index.push(serde_json::json!({
            "name": name,
            "url": url,
            "description": describe(model),
            "shipped": shipped,
            "fixture": is_fixture(model),
        }));
    }
    let index = serde_json::json!({ "models": index });
    Ok(app
        .route(
            "/models/index.json",
            get(move || async move { Json(index.clone()) }),
        )
        .layer(middleware::from_fn(log_and_revalidate)))
}

/// Whether `model` is one of the random-weight test checkpoints (tests/fixtures, target/fixtures*).
fn is_fixture(model: &Path) -> bool {
    model.components().any(|c| {
        c.as_os_str()
            .to_str()
            .is_some_and(|c| c.starts_with("fixtures"))
    })
}

/// What the page says a model is: its size, whether it is one of the random-weight test fixtures,
/// and the first paragraph of its model card (README.md) when it has one.
fn describe(model: &Path) -> String {
    let files: Vec<PathBuf> = if model.is_dir() {
        std::fs::read_dir(model)
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    } else {
        vec![model.to_path_buf()]
    };
    let bytes: u64 = files
        .iter()
        .filter_map(|f| f.metadata().ok())
        .map(|m| m.len())
        .sum();
    let size = format!("{:.1} MB", bytes as f64 / 1e6);
    if is_fixture(model) {
        return format!("random-weight test fixture, {size}: its replies are noise");
    }
    let card = std::fs::read_to_string(model.join("README.md")).unwrap_or_default();
    let summary = card
        .split("\n\n")
        .map(str::trim)
        .find(|paragraph| !paragraph.is_empty() && !paragraph.starts_with('#'));
    match summary {
        Some(summary) => format!("{size}: {}", summary.replace('\n', " ")),
        None => size,
    }
}

/// Logs each request with its status, and marks every response `no-cache` so a browser revalidates
/// (a rebuilt package is picked up at once, and no model file is served from the HTTP cache
/// without the server seeing the request).
async fn log_and_revalidate(request: Request, next: Next) -> Response {
    let line = format!("{} {}", request.method(), request.uri().path());
    let range = request.headers().get(header::RANGE).cloned();
    let mut response = next.run(request).await.into_response();
    let range = range
        .and_then(|r| r.to_str().ok().map(|r| format!(" ({r})")))
        .unwrap_or_default();
    println!("{line}{range} -> {}", response.status().as_u16());
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
