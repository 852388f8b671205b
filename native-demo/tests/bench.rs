//! `tern bench --json` on a synthetic shape: every field present and sane (no timing thresholds —
//! speed is reported by the benchmark, never asserted).

use std::process::Command;

#[test]
fn bench_json_reports_every_figure() {
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args([
            "bench",
            "--shape",
            "tiny",
            "--prompt-tokens",
            "16",
            "--gen-tokens",
            "4",
            "--copy-mib",
            "16",
            "--json",
        ])
        .output()
        .expect("running tern");
    assert!(
        out.status.success(),
        "tern bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    assert!(!report["adapter"].as_str().expect("adapter").is_empty());
    for field in [
        "load_s",
        "ttft_ms",
        "prefill_tok_s",
        "decode_tok_s",
        "gpu_bytes",
        "host_peak_rss_bytes",
        "ternary_weight_bytes",
        "copy_gbps",
        "read_gbps",
        "matvec_gbps",
        "matvec_over_copy",
    ] {
        let value = report[field]
            .as_f64()
            .unwrap_or_else(|| panic!("{field} missing or not a number: {report}"));
        assert!(value.is_finite() && value > 0.0, "{field} = {value}");
    }
    // The tiny shape's projections, in the engine layout: 4 layers × (qkv 384×256 + o 256×256 +
    // gate|up 1536×256 + down 256×768) codes at 2 bits plus an f32 scale per row.
    let rows = [384u64, 256, 1536, 256];
    let words = [16u64, 16, 16, 48];
    let per_layer: u64 = rows.iter().zip(words).map(|(r, w)| r * (w * 4 + 4)).sum();
    assert_eq!(report["ternary_weight_bytes"], 4 * per_layer);
    assert!(report["gpu_bytes"].as_u64().unwrap() > 4 * per_layer);
}

#[test]
fn bench_rejects_a_bad_shape() {
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["bench", "--shape", "12,x", "--json"])
        .output()
        .expect("running tern");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("shape"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
