//! The `tern` binary end to end on the committed fixtures (default adapter), plus `--model` given as a
//! Hugging Face repo id served by a local server that answers like the hub.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn fixture(name: &str) -> String {
    root()
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

fn tern(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(args)
        .env("XDG_RUNTIME_DIR", "/tmp")
        .output()
        .expect("tern runs")
}

fn success(args: &[&str]) -> String {
    let out = tern(args);
    assert!(
        out.status.success(),
        "tern {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// p0 of the bitnet-2b4t goldens and its reference greedy continuation (no near-tie on p0).
fn golden_p0() -> (Vec<u32>, Vec<u32>) {
    let bytes =
        std::fs::read(root().join("tests/reference/goldens/bitnet-2b4t.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ids = |k: &str| {
        st.tensor(k)
            .unwrap()
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect()
    };
    (ids("p0.ids"), ids("p0.greedy"))
}

fn join(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

#[test]
fn run_print_ids_matches_reference_greedy() {
    let (prompt, greedy) = golden_p0();
    for model in ["bitnet-2b4t", "bitnet-2b4t-tq2_0.gguf"] {
        let out = success(&[
            "run",
            "-m",
            &fixture(model),
            "--ids",
            &join(&prompt),
            "-n",
            "32",
            "--temperature",
            "0",
            "--ignore-eos",
            "--print-ids",
        ]);
        assert_eq!(out.trim(), join(&greedy), "{model}");
    }
}

#[test]
fn seeded_sampling_repeats() {
    let args = [
        "run",
        "-m",
        &fixture("bitnet-2b4t"),
        "--ids",
        "1019,300,301",
        "-n",
        "16",
        "--temperature",
        "0.9",
        "--top-k",
        "40",
        "--top-p",
        "0.95",
        "--seed",
        "7",
        "--ignore-eos",
        "--print-ids",
    ];
    let first = success(&args);
    assert_eq!(first, success(&args));
    assert_eq!(first.trim().split(',').count(), 16);
}

#[test]
fn logits_file_in_both_modes() {
    let (prompt, _) = golden_p0();
    let dir = tempdir();
    let mut outputs = Vec::new();
    for mode in ["prefill", "decode"] {
        let out = dir.join(format!("{mode}.safetensors"));
        success(&[
            "logits",
            "-m",
            &fixture("bitnet-2b4t"),
            "--ids",
            &join(&prompt),
            "--out",
            out.to_str().unwrap(),
            "--mode",
            mode,
        ]);
        let bytes = std::fs::read(&out).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let logits = st.tensor("logits").unwrap();
        assert_eq!(logits.shape(), [prompt.len(), 1024]);
        outputs.push(logits.data().to_vec());
    }
    let values = |b: &[u8]| {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect::<Vec<_>>()
    };
    let (prefill, decode) = (values(&outputs[0]), values(&outputs[1]));
    let max = prefill
        .iter()
        .zip(&decode)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max < 1e-3, "prefill and decode logits differ by {max}");
}

#[test]
fn run_prompt_and_chat_stream_text() {
    let out = success(&[
        "run",
        "-m",
        &fixture("plain-bitnet"),
        "--prompt",
        "Once upon a time",
        "-n",
        "12",
    ]);
    assert!(!out.trim().is_empty());
    let out = chat_on_fixture("Hello there\n/reset\nWhat now?\n/exit\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("[conversation reset]"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).matches("> ").count(),
        4,
        "a prompt before each of the four lines"
    );
}

/// `tern chat` on the bitnet-2b4t fixture (context 256, system message, 8-token replies) fed `input`.
fn chat_on_fixture(input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args([
            "chat",
            "-m",
            &fixture("bitnet-2b4t"),
            "-n",
            "8",
            "--system",
            "Be brief.",
        ])
        .env("XDG_RUNTIME_DIR", "/tmp")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// A conversation longer than the context drops its oldest turns and goes on, never exits.
#[test]
fn chat_outgrowing_the_context_drops_old_turns() {
    let turn = "Tell me about the weather in the old village by the river today. ".repeat(4);
    let mut input = format!("{turn}\n").repeat(6);
    input.push_str(&format!("{}\n/exit\n", "word ".repeat(400)));
    let out = chat_on_fixture(&input);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("oldest turn(s) were dropped"), "{stderr}");
    assert!(stderr.contains("does not fit"), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).matches("> ").count(),
        8,
        "a prompt before each of the eight lines"
    );
}

#[test]
fn perplexity_reports_a_number() {
    let dir = tempdir();
    let text = dir.join("text.txt");
    std::fs::write(
        &text,
        "The quick brown fox jumps over the lazy dog. Once upon a time there was a small model.",
    )
    .unwrap();
    let out = success(&[
        "perplexity",
        "-m",
        &fixture("llama-1bitllm"),
        "--file",
        text.to_str().unwrap(),
        "--ctx",
        "16",
    ]);
    let value: f64 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(value.is_finite() && value > 1.0, "{out}");
}

/// The trained model Tern ships is the default: no `--model`, no network.
#[test]
fn default_model_runs_offline_and_matches_pytorch_perplexity() {
    let offline = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(args)
            .env("XDG_RUNTIME_DIR", "/tmp")
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_ENDPOINT", "http://127.0.0.1:9")
            .output()
            .expect("tern runs");
        assert!(
            out.status.success(),
            "tern {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let reply = offline(&[
        "run",
        "--chat",
        "--prompt",
        "What does os.path.join do?",
        "-n",
        "24",
    ]);
    assert!(reply.trim().len() > 8, "a reply of some words: {reply:?}");

    let goldens = root().join("tests/reference/goldens");
    let figures: serde_json::Value =
        serde_json::from_slice(&std::fs::read(goldens.join("tern-pydoc-6m.json")).unwrap())
            .unwrap();
    let reference = figures["excerpt_perplexity"].as_f64().unwrap();
    let out = offline(&[
        "perplexity",
        "--file",
        goldens.join("tern-pydoc-6m-valid.txt").to_str().unwrap(),
        "--ctx",
        "256",
    ]);
    let ours: f64 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        (ours / reference - 1.0).abs() <= 0.005,
        "tern perplexity {ours} vs PyTorch {reference}: more than 0.5 % apart ({out})"
    );
}

#[test]
fn bad_model_paths_fail_clearly() {
    let out = tern(&["run", "-m", "/no/such/model", "--prompt", "hi"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/model"));
    let dir = tempdir();
    std::fs::write(dir.join("config.json"), "{\"model_type\": \"bitnet\"").unwrap();
    let out = tern(&["run", "-m", dir.to_str().unwrap(), "--prompt", "hi"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("config.json"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `tern` from the repository root with `env` set and a hub endpoint where nothing listens,
/// so a download attempt shows in the message.
fn tern_offline_env(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tern"));
    command
        .args(args)
        .current_dir(root())
        .env("XDG_RUNTIME_DIR", "/tmp")
        .env("RUST_BACKTRACE", "0")
        .env("HF_ENDPOINT", "http://127.0.0.1:9");
    for (key, value) in env {
        command.env(key, value);
    }
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.code() != Some(101) && !stderr.contains("panicked"),
        "{stderr}"
    );
    (out.status.success(), stderr)
}

#[test]
fn local_looking_paths_never_start_a_download() {
    let (ok, err) = tern_offline_env(
        &["run", "-m", "tests/fixtures/no-such-model", "-p", "hi"],
        &[],
    );
    assert!(!ok);
    assert!(
        err.contains("no such file or directory") && err.contains("`tests` is a local directory"),
        "{err}"
    );
    assert!(!err.contains("cannot reach"), "{err}");
    let dir = tempdir();
    let link = dir.join("model");
    std::os::unix::fs::symlink(dir.join("gone"), &link).unwrap();
    let (ok, err) = tern_offline_env(&["run", "-m", link.to_str().unwrap(), "-p", "hi"], &[]);
    assert!(!ok);
    assert!(err.contains("broken symbolic link"), "{err}");
}

#[test]
fn unreachable_hub_says_what_to_do_next() {
    let home = tempdir();
    let home = home.to_str().unwrap();
    let (ok, err) = tern_offline_env(
        &["run", "-m", "tern-tests/not-cached", "-p", "hi"],
        &[("HF_HOME", home)],
    );
    assert!(!ok);
    for want in [
        "tern-tests/not-cached",
        "cannot reach http://127.0.0.1:9",
        "HF_ENDPOINT",
        "local model directory",
        "HF_HUB_OFFLINE",
    ] {
        assert!(err.contains(want), "{want:?} missing from: {err}");
    }
    let (ok, err) = tern_offline_env(
        &["run", "-m", "tern-tests/not-cached", "-p", "hi"],
        &[("HF_HOME", home), ("HF_HUB_OFFLINE", "1")],
    );
    assert!(!ok);
    assert!(
        err.contains("not in the local cache") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
    assert!(!err.contains("cannot reach"), "{err}");
}

#[test]
fn a_safetensors_file_opens_its_model_directory() {
    let (prompt, greedy) = golden_p0();
    let file = format!("{}/model.safetensors", fixture("bitnet-2b4t"));
    let ids = join(&prompt);
    let args = [
        "run",
        "-m",
        &file,
        "--ids",
        &ids,
        "-n",
        "32",
        "--ignore-eos",
        "--print-ids",
    ];
    assert_eq!(success(&args).trim(), join(&greedy));
    // Alone, it says what is missing.
    let dir = tempdir();
    std::fs::copy(&file, dir.join("model.safetensors")).unwrap();
    let lone = dir.join("model.safetensors");
    let (ok, err) = tern_offline_env(&["run", "-m", lone.to_str().unwrap(), "-p", "hi"], &[]);
    assert!(!ok);
    assert!(
        err.contains("config.json") && err.contains("model directory") && !err.contains("GGUF"),
        "{err}"
    );
}

/// A checkpoint whose every value is finite but whose arithmetic overflows (an output projection
/// scaled by 3.4e38) makes every logit NaN: greedy and sampled decoding both stop with an error
/// instead of emitting a token.
#[test]
fn all_nan_logits_are_an_error_not_a_token() {
    let dir = tempdir();
    for entry in std::fs::read_dir(fixture("bitnet-2b4t")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let weights = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let at = header["model.layers.0.self_attn.o_proj.weight_scale"]["data_offsets"][0]
        .as_u64()
        .unwrap() as usize
        + 8
        + n;
    // bf16 0x7f7f: the largest finite value.
    bytes[at..at + 2].copy_from_slice(&0x7f7fu16.to_le_bytes());
    std::fs::write(&weights, bytes).unwrap();
    let model = dir.to_str().unwrap();
    for sampling in [
        &["--temperature", "0"][..],
        &["--temperature", "0.8", "--seed", "3"],
    ] {
        let mut args = vec!["run", "-m", model, "-p", "Hello", "-n", "4"];
        args.extend_from_slice(sampling);
        let (ok, err) = tern_offline_env(&args, &[]);
        assert!(!ok, "{sampling:?} succeeded");
        assert!(err.contains("all NaN"), "{sampling:?}: {err}");
    }
}

#[test]
fn downloads_a_repo_id_from_a_hub_compatible_server() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let served = root().join("tests/fixtures/bitnet-2b4t");
    std::thread::spawn(move || serve_hub(listener, &served));
    let home = tempdir();
    let (prompt, greedy) = golden_p0();
    // The second run finds everything in the cache; the third runs offline, with nothing listening.
    for offline in [false, false, true] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tern"));
        command
            .args([
                "run",
                "-m",
                "tern-tests/bitnet-tiny",
                "--ids",
                &join(&prompt),
                "-n",
                "32",
                "--ignore-eos",
                "--print-ids",
            ])
            .env("HF_HOME", &home)
            .env("XDG_RUNTIME_DIR", "/tmp");
        match offline {
            false => command.env("HF_ENDPOINT", &endpoint),
            true => command
                .env("HF_ENDPOINT", "http://127.0.0.1:9")
                .env("HF_HUB_OFFLINE", "1"),
        };
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "offline {offline}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), join(&greedy));
    }
    let snapshot = home.join("hub/models--tern-tests--bitnet-tiny/snapshots");
    assert!(
        snapshot.exists(),
        "downloaded into the standard HF cache layout"
    );

    // `tern pull` prints the snapshot directory, and `tern run` takes it as a local model.
    let pull = |model: &str| {
        Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["pull", model])
            .env("HF_ENDPOINT", &endpoint)
            .env("HF_HOME", &home)
            .output()
            .unwrap()
    };
    let out = pull("tern-tests/bitnet-tiny");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let local = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(local.starts_with(&snapshot), "{}", local.display());
    assert!(local.join("config.json").is_file() && local.join("model.safetensors").is_file());
    let out = pull("tern-tests/bitnet-tiny/missing.gguf");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("missing.gguf") && err.contains("not found"),
        "{err}"
    );
}

/// Answers `GET /{repo}/resolve/main/{file}` like huggingface.co: ranged reads, commit and etag
/// headers, 404 for files the directory lacks.
fn serve_hub(listener: TcpListener, dir: &Path) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).is_err() {
            continue;
        }
        let mut range = None;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                break;
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                let (start, end) = value.trim().split_once('-').unwrap();
                range = Some((start.parse::<u64>().unwrap(), end.parse::<u64>().ok()));
            }
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("");
        let file = path.split("/resolve/main/").nth(1).unwrap_or("");
        let body = std::fs::read(dir.join(file))
            .ok()
            .filter(|_| !file.is_empty() && !file.contains(".."));
        let response = match body {
            None => {
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec()
            }
            Some(body) => {
                let size = body.len() as u64;
                let (start, end) = range.map_or((0, size - 1), |(s, e)| {
                    (s, e.unwrap_or(size - 1).min(size - 1))
                });
                let slice = &body[start as usize..=end as usize];
                let mut head = format!(
                    "HTTP/1.1 206 Partial Content\r\ncontent-length: {}\r\ncontent-range: bytes {start}-{end}/{size}\r\n\
                     x-repo-commit: 0123456789abcdef0123456789abcdef01234567\r\netag: \"{}-{size}\"\r\nconnection: close\r\n\r\n",
                    slice.len(),
                    file.replace('/', "_")
                )
                .into_bytes();
                head.extend_from_slice(slice);
                head
            }
        };
        let _ = stream.write_all(&response);
        let _ = reader.read_to_end(&mut Vec::new());
    }
}

fn tempdir() -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tern-cli-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A checkpoint with every dimension of microsoft/bitnet-b1.58-2B-4T (1.1 GB: 30 layers, 128256-token
/// vocabulary, 656 MB embedding split over binding-sized chunks) loads and generates. Needs
/// `cargo xtask fixtures --full` first; `cargo xtask test` does that and runs the ignored tests.
#[test]
#[ignore = "needs target/fixtures-full (cargo xtask fixtures --full)"]
fn full_size_2b4t_checkpoint_loads_and_generates() {
    let dir = root().join("target/fixtures-full");
    let out = success(&[
        "run",
        "-m",
        dir.to_str().unwrap(),
        "--prompt",
        "Hello, how are you?",
        "--chat",
        "-n",
        "3",
        "--ignore-eos",
        "--print-ids",
        "--context",
        "512",
    ]);
    let ids: Vec<u32> = out.trim().split(',').map(|s| s.parse().unwrap()).collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|&id| id < 128256));
}

/// Runs `tern` with extra environment variables; asserts it failed cleanly (an error, not a panic)
/// and returns its stderr.
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(args)
        .env("XDG_RUNTIME_DIR", "/tmp")
        .envs(env.iter().copied())
        .output()
        .expect("tern runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "tern {args:?} succeeded");
    assert_ne!(
        out.status.code(),
        Some(101),
        "tern {args:?} panicked:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "tern {args:?}:\n{stderr}");
    stderr
}

#[test]
fn a_batch_beyond_the_binding_limit_is_refused_naming_the_limit() {
    let model = fixture("bitnet-2b4t");
    let stderr = refused(
        &[
            "run", "-m", &model, "--prompt", "hi", "-n", "1", "--batch", "100000",
        ],
        &[],
    );
    // [100000, 1024] f32 logits: 409.6 MB, more than any adapter's binding limit in CI.
    for expected in ["max_storage_buffer_binding_size", "409600000", "--batch"] {
        assert!(stderr.contains(expected), "{expected:?} not in:\n{stderr}");
    }
}

#[test]
fn a_kv_cache_beyond_the_binding_limit_is_refused_naming_the_limit() {
    // The fixture with a context of 2^21 positions. An f32 K cache of 2^20 positions per layer is
    // 2 KV heads × 2^20 × 32 × 4 bytes = 256 MiB, more than WebGPU's (and lavapipe's) 128 MiB
    // binding limit, which TERN_MAX_STORAGE_BINDING imposes on any adapter; the default f16 cache
    // fits twice the positions, so it is refused at 2^21.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("long-context-fixture");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixture("bitnet-2b4t")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    let config_path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["max_position_embeddings"] = (1u64 << 21).into();
    std::fs::write(&config_path, config.to_string()).unwrap();

    let model = dir.display().to_string();
    for (kv_cache, context, largest) in
        [("f32", "1048576", "524288"), ("f16", "2097152", "1048576")]
    {
        let args = [
            "run",
            "-m",
            &model,
            "--prompt",
            "hi",
            "-n",
            "1",
            "--context",
            context,
            "--kv-cache",
            kv_cache,
        ];
        let stderr = refused(&args, &[("TERN_MAX_STORAGE_BINDING", "134217728")]);
        for expected in [
            "max_storage_buffer_binding_size",
            "134217728",
            "K (and V) cache",
            &format!("--context {largest}"),
        ] {
            assert!(
                stderr.contains(expected),
                "{kv_cache}: {expected:?} not in:\n{stderr}"
            );
        }
    }
}

/// The chat's opening line, `/help`, unknown commands, `/system`, `/save` and `/load`.
#[test]
fn chat_commands() {
    let dir = tempdir();
    let file = dir.join("conversation.json");
    let file = file.to_str().unwrap();
    let out = chat_on_fixture(&format!(
        "/help\n/system Answer in French.\nHello\n/save {file}\n/reset\n/load {file}\nAgain\n/exit\n"
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("context 256 (the model's maximum; --context 4096 asked)"),
        "{stderr}"
    );
    assert!(stderr.contains("bitnet-2b4t on "), "{stderr}");
    for command in [
        "/system TEXT",
        "/save FILE",
        "/load FILE",
        "/reset",
        "/exit",
    ] {
        assert!(stderr.contains(command), "/help lists {command}: {stderr}");
    }
    assert!(stderr.contains("[3 messages saved"), "{stderr}");
    assert!(stderr.contains("[3 messages loaded"), "{stderr}");
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    assert_eq!(saved[0]["role"], "system");
    assert_eq!(saved[0]["content"], "Answer in French.");
    assert_eq!(saved[1]["role"], "user");
    assert_eq!(saved[1]["content"], "Hello");
    assert_eq!(saved[2]["role"], "assistant");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).matches("> ").count(),
        8,
        "a prompt before each of the eight lines"
    );
}

/// `/stats` turns on a line of figures after each reply (and off again); notes carry no colour
/// codes when stderr is not a terminal.
#[test]
fn chat_stats_show_each_replys_figures() {
    let out = chat_on_fixture("/stats\nHello\n/stats\nAgain\n/exit\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("[reply figures on]"), "{stderr}");
    assert!(stderr.contains("[reply figures off]"), "{stderr}");
    let figures: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(" computed in "))
        .collect();
    assert_eq!(figures.len(), 1, "one reply with figures:\n{stderr}");
    assert!(figures[0].starts_with("[8 tokens in "), "{}", figures[0]);
    assert!(figures[0].contains("tok/s") && figures[0].contains("stop: MaxTokens"));
    assert!(
        !stderr.contains('\x1b'),
        "colour codes on a pipe:\n{stderr}"
    );
}

/// An unknown `/command` is an error line, never a message to the model.
#[test]
fn chat_unknown_command_does_not_reach_the_model() {
    let out = chat_on_fixture("/bogus\n/exit\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("unknown command /bogus"), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "> > ", "no reply");
}

/// A child process whose stdout and stderr are collected as they come.
struct Live {
    child: std::process::Child,
    stdout: std::sync::Arc<std::sync::Mutex<String>>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Live {
    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(args)
            .env("XDG_RUNTIME_DIR", "/tmp")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let collect = |mut from: Box<dyn Read + Send>| {
            let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
            let to = text.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = from.read(&mut buf) {
                    to.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
            text
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        Live {
            child,
            stdout,
            stderr,
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Waits (at most a minute) until `ready` holds for what stdout has so far.
    fn wait_stdout(&self, what: &str, ready: impl Fn(&str) -> bool) {
        let start = std::time::Instant::now();
        while !ready(&self.stdout.lock().unwrap()) {
            assert!(
                start.elapsed().as_secs() < 60,
                "waited for {what}; stdout {:?}, stderr {:?}",
                self.stdout.lock().unwrap(),
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn interrupt(&self) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait(mut self) -> (std::process::ExitStatus, String, String) {
        let status = self.child.wait().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let out = self.stdout.lock().unwrap().clone();
        let err = self.stderr.lock().unwrap().clone();
        (status, out, err)
    }
}

/// Ctrl-C (SIGINT) during a reply stops that reply and the chat goes on; at the prompt it quits.
#[test]
fn chat_ctrl_c_stops_the_reply_and_keeps_the_session() {
    let mut chat = Live::spawn(&[
        "chat",
        "-m",
        &fixture("bitnet-2b4t"),
        "-n",
        "200",
        "--ignore-eos",
    ]);
    chat.wait_stdout("the first prompt", |s| s == "> ");
    chat.send("Tell me a long story.\n");
    chat.wait_stdout("the first reply to start", |s| s.len() > 2);
    chat.interrupt();
    // Each prompt after a reply follows the reply's newline.
    chat.wait_stdout("the second prompt", |s| s.contains("\n> "));
    assert!(
        chat.stderr.lock().unwrap().contains("[reply stopped]"),
        "{:?}",
        chat.stderr.lock().unwrap()
    );
    let first_reply_end = chat.stdout.lock().unwrap().len();
    chat.send("And another one.\n");
    chat.wait_stdout("the second reply and the third prompt", |s| {
        s.matches("\n> ").count() >= 2
    });
    let out = chat.stdout.lock().unwrap().clone();
    assert!(
        out[first_reply_end..].trim_end_matches("> ").trim().len() > 2,
        "the second message is answered: {out:?}"
    );
    chat.interrupt();
    let (status, _, stderr) = chat.wait();
    assert!(
        status.success(),
        "Ctrl-C at the prompt quits cleanly: {stderr}"
    );
    assert_eq!(stderr.matches("[reply stopped]").count(), 1, "{stderr}");
}

#[test]
fn max_tokens_zero_generates_nothing() {
    for flag in ["-n", "--max-tokens"] {
        let out = success(&[
            "run",
            "-m",
            &fixture("plain-bitnet"),
            "--prompt",
            "Once upon a time",
            flag,
            "0",
            "--print-ids",
        ]);
        assert_eq!(out.trim(), "", "{flag} 0");
    }
}

/// `tern run … | head`: a closed stdout ends the command quietly, with success.
#[test]
fn run_into_a_closed_pipe_stops_quietly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args([
            "run",
            "-m",
            &fixture("bitnet-2b4t"),
            "--prompt",
            "Once upon a time",
            "-n",
            "240",
            "--ignore-eos",
        ])
        .env("XDG_RUNTIME_DIR", "/tmp")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 1];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // The read end is closed here; the next writes fail with EPIPE.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.to_lowercase().contains("broken pipe"), "{stderr}");
}

#[test]
fn negative_temperatures_are_refused_in_both_spellings() {
    for args in [
        &["run", "--prompt", "hi", "--temperature=-1"][..],
        &["run", "--prompt", "hi", "--temperature", "-1"],
        &["chat", "--temperature=-0.5"],
    ] {
        let out = tern(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(
            stderr.contains("negative temperatures are invalid"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn every_sampling_option_has_help() {
    // Long help: each option's line, then its description on the next line.
    let help = success(&["run", "--help"]);
    let lines: Vec<&str> = help.lines().collect();
    for option in [
        "--max-tokens",
        "--temperature",
        "--top-k",
        "--top-p",
        "--min-p",
        "--repetition-penalty",
        "--seed",
        "--stop",
        "--ignore-eos",
    ] {
        let at = lines
            .iter()
            .position(|l| l.contains(&format!("{option} <")) || l.trim_end().ends_with(option))
            .unwrap_or_else(|| panic!("{option} in {help}"));
        let next = lines.get(at + 1).map_or("", |l| l.trim());
        assert!(
            !next.is_empty() && !next.starts_with('[') && !next.starts_with('-'),
            "{option} has no help: {:?}",
            &lines[at..(at + 2).min(lines.len())]
        );
    }
}

/// `perplexity` has `--context` (the window; `--ctx` is a hidden alias) and checks `--file` before
/// loading the model.
#[test]
fn perplexity_options_and_a_missing_file() {
    let help = success(&["perplexity", "--help"]);
    assert!(help.contains("--context"), "{help}");
    assert!(!help.contains("--ctx"), "{help}");
    let out = tern(&[
        "perplexity",
        "-m",
        "/no/such/model",
        "--file",
        "/no/such/text.txt",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("/no/such/text.txt"), "{stderr}");
}

#[test]
fn bench_without_a_model_or_shape_says_how() {
    let out = tern(&["bench"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--shape 2b4t"), "{stderr}");
}
