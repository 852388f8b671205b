//! `tern bench --json` on a synthetic shape: every field present and sane (no timing thresholds —
//! speed is reported by the benchmark, never asserted).

use std::process::Command;

fn bench_tiny(extra: &[&str]) -> serde_json::Value {
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
        .args(extra)
        .output()
        .expect("running tern");
    assert!(
        out.status.success(),
        "tern bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

/// `kernel_ms` names every kernel of a decode step with a non-negative time, and the times add up
/// to the order of the measured step time (loosely: per-kernel passes or submits add overhead, and a
/// step also pays for its submit and readback).
fn check_kernel_ms(report: &serde_json::Value, source: &str) {
    assert_eq!(report["kernel_ms_source"], source, "{report}");
    let kernels = report["kernel_ms"].as_object().expect("kernel_ms object");
    for name in [
        "embedding",
        "rmsnorm_quant",
        "matvec_qkv",
        "rope",
        "attention_decode",
        "matvec_o",
        "matvec_gate_up",
        "matvec_down",
        "rmsnorm",
        "lm_head",
        "argmax",
    ] {
        let ms = kernels[name]
            .as_f64()
            .unwrap_or_else(|| panic!("kernel_ms.{name} missing: {report}"));
        assert!(ms.is_finite() && ms >= 0.0, "kernel_ms.{name} = {ms}");
    }
    let total = report["kernel_ms_total"].as_f64().expect("kernel_ms_total");
    let sum: f64 = kernels.values().filter_map(|v| v.as_f64()).sum();
    assert!(
        (total - sum).abs() <= 1e-6 * total.max(1.0),
        "{total} vs Σ {sum}"
    );
    let step = report["decode_step_ms"].as_f64().expect("decode_step_ms");
    assert!(
        total > 0.0 && total < 20.0 * step && total > step / 200.0,
        "kernel_ms_total {total} against a decode step of {step} ms"
    );
}

#[test]
fn bench_json_reports_every_figure() {
    let report = bench_tiny(&[]);
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
    let source = if report["adapter"]
        .as_str()
        .is_some_and(|a| a.contains("llvmpipe"))
    {
        "gpu-timestamps" // lavapipe has TIMESTAMP_QUERY
    } else {
        report["kernel_ms_source"].as_str().unwrap_or("missing")
    };
    check_kernel_ms(&report, source);
    check_energy(&report["energy"], &report);
    let estimate = &report["energy_estimate"];
    assert!(
        estimate["note"]
            .as_str()
            .is_some_and(|n| n.contains("estimate")),
        "{report}"
    );
    assert_eq!(estimate["assumptions"]["int8_add_pj"], 0.007);
    for kind in ["ternary", "dense"] {
        let joules = estimate[kind]["j_per_token"].as_f64().unwrap_or(f64::NAN);
        assert!(joules.is_finite() && joules > 0.0, "{kind}: {estimate}");
    }
    // The estimate reads the same projection bytes that the report counts.
    let lm_head = 2.0 * 256.0 * 1024.0;
    assert_eq!(
        estimate["ternary"]["weight_bytes_read"].as_f64(),
        Some(4.0 * per_layer as f64 + lm_head)
    );
}

/// `energy` is either a measurement (a counter, the idle draw and both phases, positive and
/// finite) or `counter: null` with the reason — never a number without a counter.
fn check_energy(energy: &serde_json::Value, report: &serde_json::Value) {
    if energy["counter"].is_null() {
        let reason = energy["no_counter"].as_str().expect("no_counter reason");
        assert!(!reason.is_empty(), "{report}");
        assert!(energy.get("decode").is_none(), "{report}");
        return;
    }
    assert!(
        energy["idle_w"].as_f64().is_some_and(f64::is_finite),
        "{report}"
    );
    for phase in ["prefill", "decode"] {
        let joules = energy[phase]["joules"].as_f64().unwrap_or(f64::NAN);
        assert!(joules.is_finite() && joules >= 0.0, "{phase}: {report}");
        assert!(energy[phase]["j_per_token"].as_f64().is_some(), "{report}");
    }
}

#[test]
fn bench_kernel_ms_falls_back_to_cpu_timed_submits() {
    check_kernel_ms(
        &bench_tiny(&["--kernel-timing", "cpu-submit", "--profile-steps", "2"]),
        "cpu-submit",
    );
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

#[test]
fn bench_compare_dense_reports_the_baseline_and_its_ratios() {
    let report = bench_tiny(&["--compare", "dense"]);
    let dense = &report["dense"];
    assert_eq!(dense["weight_dtype"], "f16", "{report}");
    let number = |v: &serde_json::Value, field: &str| {
        let x = v[field]
            .as_f64()
            .unwrap_or_else(|| panic!("{field} missing or not a number: {report}"));
        assert!(x.is_finite() && x > 0.0, "{field} = {x}");
        x
    };
    for field in [
        "load_s",
        "ttft_ms",
        "prefill_tok_s",
        "decode_tok_s",
        "gpu_bytes",
    ] {
        number(dense, field);
    }
    // The ratios are the two measurements of this run divided, dense over ternary.
    let speedup = number(&report, "speedup_decode");
    let want = number(&report, "decode_tok_s") / number(dense, "decode_tok_s");
    assert!((speedup - want).abs() <= 1e-9 * want, "{speedup} vs {want}");
    let memory = number(&report, "memory_ratio");
    let want = number(dense, "gpu_bytes") / number(&report, "gpu_bytes");
    assert!((memory - want).abs() <= 1e-9 * want, "{memory} vs {want}");
    check_energy(&dense["energy"], &report);
    let energy_ratio = &report["energy_ternary_over_dense"];
    assert_eq!(
        energy_ratio["estimate"], report["energy_estimate"]["ternary_over_dense"],
        "{report}"
    );
    let measured = |e: &serde_json::Value| e["decode"]["j_per_token"].as_f64();
    match (measured(&report["energy"]), measured(&dense["energy"])) {
        (Some(t), Some(d)) => assert_eq!(
            energy_ratio["measured"]["decode_j_per_token"].as_f64(),
            Some(t / d)
        ),
        _ => assert!(energy_ratio["no_counter"].is_string(), "{report}"),
    }
    // The tiny shape's projections (4 layers of 256·384 + 256·256 + 2·768·256 + 256·768 weights)
    // in f16 (2 bytes each) against 2-bit codes (¼ byte): the dense model holds ~1.75 bytes a
    // weight more.
    let projection_weights = 4.0 * (256.0 * 384.0 + 256.0 * 256.0 + 3.0 * 768.0 * 256.0);
    let extra = number(dense, "gpu_bytes") - number(&report, "gpu_bytes");
    assert!(
        extra >= 1.5 * projection_weights,
        "dense holds only {extra} more bytes"
    );
}

#[test]
fn bench_compare_and_sweep_need_a_synthetic_shape() {
    for args in [
        &["bench", "--model", "x", "--compare", "dense"][..],
        &["bench", "--sweep", "--shape", "tiny"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(args)
            .output()
            .expect("running tern");
        assert!(!out.status.success(), "{args:?} succeeded");
    }
}
