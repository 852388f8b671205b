//! The C API from C: the committed header is current, `examples/chat.c` compiles with `cc` against
//! it and the built `libtern`, and greedily completes a prompt exactly as the engine does for
//! `tern run --prompt`; `tests/abi.c` checks the contract (error codes, cancel, busy, seeds, chat).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use engine::{GenerateOptions, Model, SessionOptions};

const GENERATED_HEADER: &str = include_str!(concat!(env!("OUT_DIR"), "/tern.h"));
const PROMPT: &str = "The capital of France is";
const MAX_TOKENS: usize = 16;

fn capi_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixture() -> PathBuf {
    capi_dir().join("../../tests/fixtures/bitnet-2b4t")
}

/// Builds `libtern` and returns the directory holding it. Cargo does not build a cdylib for the
/// integration tests of its own package, so build it with the profile the tests were built with
/// (`test`: everything it needs is already compiled; `cargo test --release` builds its own).
fn library_dir() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let profile = if cfg!(debug_assertions) {
                "test"
            } else {
                "release"
            };
            let status = Command::new(env!("CARGO"))
                .args([
                    "build",
                    "--quiet",
                    "--lib",
                    "-p",
                    "tern-capi",
                    "--profile",
                    profile,
                ])
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building libtern failed");
            // Test binaries live in <target>/<profile dir>/deps; the library one level up.
            let exe = std::env::current_exe().unwrap();
            let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
            let name = format!(
                "{}tern{}",
                std::env::consts::DLL_PREFIX,
                std::env::consts::DLL_SUFFIX
            );
            assert!(dir.join(&name).exists(), "no {name} in {}", dir.display());
            dir
        })
        .clone()
}

/// Compiles `source` with the system C compiler against the header and the shared library.
fn compile(source: &Path, name: &str) -> PathBuf {
    let lib = library_dir();
    let out = std::env::temp_dir().join(format!("tern-capi-{name}-{}", std::process::id()));
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"])
        .arg("-I")
        .arg(capi_dir().join("include"))
        .arg(source)
        .arg("-L")
        .arg(&lib)
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-ltern", "-lpthread", "-o"])
        .arg(&out)
        .status()
        .expect("a C compiler `cc` is installed");
    assert!(status.success(), "cc {} failed", source.display());
    out
}

fn run(program: &Path, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .env("XDG_RUNTIME_DIR", "/tmp")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{} {args:?} failed:\n{}",
        program.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn committed_header_is_current() {
    let committed = capi_dir().join("include/tern.h");
    if std::env::var_os("TERN_BLESS").is_some() {
        std::fs::write(&committed, GENERATED_HEADER).unwrap();
    }
    let on_disk = std::fs::read_to_string(&committed).unwrap_or_default();
    assert!(
        on_disk == GENERATED_HEADER,
        "engine/capi/include/tern.h is stale: regenerate it with \
         `TERN_BLESS=1 cargo test -p tern-capi --test c_api committed_header_is_current`"
    );
}

/// What `tern run --model <fixture> --prompt PROMPT --max-tokens MAX_TOKENS` prints: the engine's
/// greedy completion, streamed, then a newline.
fn engine_completion() -> String {
    let model = Model::open(&fixture().to_string_lossy()).unwrap();
    let mut session = model.session(SessionOptions::default()).unwrap();
    let prompt = model.tokenizer().encode(PROMPT, true).unwrap();
    let options = GenerateOptions {
        max_new_tokens: MAX_TOKENS,
        ..GenerateOptions::default()
    };
    let mut text = String::new();
    pollster::block_on(session.generate(&prompt, &options, |t| text.push_str(t.text))).unwrap();
    text + "\n"
}

#[test]
fn chat_example_completes_like_the_engine() {
    let chat = compile(&capi_dir().join("examples/chat.c"), "chat");
    let fixture = fixture().display().to_string();
    let from_c = run(&chat, &[&fixture, PROMPT, &MAX_TOKENS.to_string()]);
    assert_eq!(from_c, engine_completion());
    // One chat turn through the template streams something and ends cleanly.
    run(&chat, &["--chat", &fixture, "Hello", "8"]);
    std::fs::remove_file(chat).unwrap();
}

#[test]
fn abi_contract() {
    let abi = compile(&capi_dir().join("tests/abi.c"), "abi");
    assert_eq!(run(&abi, &[&fixture().display().to_string()]), "ok\n");
    std::fs::remove_file(abi).unwrap();
}
