//! `repack_{hf_packed,i2s,tq2_0,tq1_0}.wgsl` and the host repack (what the loader runs on CPU
//! adapters) against `reference::repack` + `pack_ternary`. Integer paths: each output must equal
//! `pack_ternary` of the original values exactly, and block scales must be exact. A queue of repacks
//! (GPU and host entries mixed) writes each tensor into its rows of one fused weight and reports
//! each tensor's scale and errors by name, read back once.

use half::f16;
use proptest::prelude::*;
use rand::Rng;
use tern::gpu::{BufferUsage, Context, GpuBuffer, Uploader};
use tern::ops::repack::{engine_bytes, Repacker, TernaryLayout};
use tern::reference::repack::{
    decode_hf_packed, decode_i2s, decode_tq1_0, decode_tq2_0, encode_hf_packed, encode_i2s,
    encode_tq1_0, encode_tq2_0, i2s_scale, TQ1_0_BLOCK_BYTES, TQ2_0_BLOCK_BYTES, TQ_BLOCK,
};
use tern::reference::ternary::pack_ternary;
use tern_tests::{for_each_adapter, seeded};

const LAYOUTS: [TernaryLayout; 4] = [
    TernaryLayout::HfPacked,
    TernaryLayout::I2S,
    TernaryLayout::Tq2_0,
    TernaryLayout::Tq1_0,
];

/// Where a repack runs: the kernel, or the host loop the loader uses on CPU adapters.
#[derive(Clone, Copy, Debug)]
enum RunOn {
    Gpu,
    Host,
}

const BOTH: [RunOn; 2] = [RunOn::Gpu, RunOn::Host];

/// Queues the repack of `bytes` into `out` from `first_row` on, on the GPU or on the host.
#[allow(clippy::too_many_arguments)] // one tensor's description, as the queue takes it
fn push(
    ctx: &Context,
    queue: &mut tern::ops::repack::RepackQueue<'_>,
    on: RunOn,
    name: &str,
    layout: TernaryLayout,
    bytes: &[u8],
    (rows, cols): (usize, usize),
    out: &GpuBuffer,
    first_row: usize,
) -> tern::Result<()> {
    match on {
        RunOn::Gpu => {
            let raw = GpuBuffer::from_bytes(ctx, "raw", bytes, BufferUsage::Storage).unwrap();
            queue.submit(ctx, name, layout, &raw, rows, cols, out, first_row)
        }
        RunOn::Host => {
            let mut uploader = Uploader::new(ctx);
            queue.repack_on_host(
                ctx,
                &mut uploader,
                name,
                layout,
                bytes,
                rows,
                cols,
                out,
                first_row,
            )
        }
    }
}

fn repack(
    ctx: &Context,
    on: RunOn,
    layout: TernaryLayout,
    bytes: &[u8],
    rows: usize,
    cols: usize,
) -> tern::Result<(Vec<u32>, Option<f32>)> {
    let repacker = Repacker::new(ctx);
    let packed = GpuBuffer::new(
        ctx,
        "packed",
        engine_bytes(rows, cols),
        BufferUsage::Storage,
    )
    .unwrap();
    let mut queue = repacker.queue(ctx, 1).unwrap();
    push(
        ctx,
        &mut queue,
        on,
        "test.weight",
        layout,
        bytes,
        (rows, cols),
        &packed,
        0,
    )?;
    let scale = pollster::block_on(queue.finish(ctx))?[0];
    Ok((pollster::block_on(packed.read_vec(ctx)).unwrap(), scale))
}

/// Random ternary values; every fifth 256-value block is zeroed (TQ writers give those blocks d = 0).
fn random_ternary(rng: &mut impl Rng, n: usize) -> Vec<i8> {
    let mut t: Vec<i8> = (0..n).map(|_| rng.random_range(-1..=1)).collect();
    for block in t.chunks_mut(TQ_BLOCK).step_by(5) {
        block.fill(0);
    }
    t
}

/// The file bytes of `t` in `layout`, checked to decode back to `t` on the CPU, and the scale the
/// repack must report.
fn encode(
    layout: TernaryLayout,
    t: &[i8],
    rows: usize,
    cols: usize,
    scale: f16,
) -> (Vec<u8>, Option<f32>) {
    let n = rows * cols;
    match layout {
        TernaryLayout::HfPacked => {
            let bytes = encode_hf_packed(t, rows, cols);
            assert_eq!(decode_hf_packed(&bytes, rows, cols).unwrap(), t);
            (bytes, None)
        }
        TernaryLayout::I2S => {
            let blob = encode_i2s(t, scale.to_f32());
            assert_eq!(decode_i2s(&blob, n).unwrap(), t);
            assert_eq!(i2s_scale(&blob, n).unwrap(), scale.to_f32());
            (blob, None)
        }
        TernaryLayout::Tq2_0 | TernaryLayout::Tq1_0 => {
            let (bytes, decoded) = if layout == TernaryLayout::Tq2_0 {
                let bytes = encode_tq2_0(t, scale);
                let decoded = decode_tq2_0(&bytes, n).unwrap();
                (bytes, decoded)
            } else {
                let bytes = encode_tq1_0(t, scale);
                let decoded = decode_tq1_0(&bytes, n).unwrap();
                (bytes, decoded)
            };
            let expected_scale = if t.iter().all(|&v| v == 0) {
                0.0
            } else {
                scale.to_f32()
            };
            assert_eq!(decoded, (t.to_vec(), expected_scale));
            (bytes, Some(expected_scale))
        }
    }
}

fn check(ctx: &Context, layout: TernaryLayout, rows: usize, cols: usize, seed: u64) {
    let mut rng = seeded(seed);
    let t = random_ternary(&mut rng, rows * cols);
    let scale = f16::from_f32(rng.random_range(0.5..3.0));
    let (bytes, expected_scale) = encode(layout, &t, rows, cols, scale);
    for on in BOTH {
        let (packed, scale) = repack(ctx, on, layout, &bytes, rows, cols).unwrap();
        assert_eq!(
            scale, expected_scale,
            "{layout:?} {rows}×{cols} on {on:?}: scale"
        );
        assert!(
            packed == pack_ternary(&t, rows, cols),
            "{layout:?} {rows}×{cols} on {on:?}: packed weights differ"
        );
    }
}

#[test]
fn model_shapes() {
    // bitnet-b1.58-2B-4T: q/o (2560×2560), gate/up (6912×2560), down (2560×6912), as [out, in].
    for (rows, cols) in [(2560, 2560), (6912, 2560), (2560, 6912)] {
        let mut rng = seeded(rows as u64 * 7 + cols as u64);
        let t = random_ternary(&mut rng, rows * cols);
        let expected = pack_ternary(&t, rows, cols);
        let scale = f16::from_f32(1.75);
        for layout in LAYOUTS {
            let (bytes, expected_scale) = encode(layout, &t, rows, cols, scale);
            for_each_adapter(|ctx| {
                for on in BOTH {
                    let (packed, scale) = repack(ctx, on, layout, &bytes, rows, cols).unwrap();
                    assert_eq!(scale, expected_scale, "{layout:?} {rows}×{cols} on {on:?}");
                    assert!(
                        packed == expected,
                        "{layout:?} {rows}×{cols} on {on:?}: packed weights differ"
                    );
                }
            });
        }
    }
}

/// Builds the expected values of a hand-made tensor: zeros except `(index, value)` pairs.
fn values(n: usize, set: &[(usize, i8)]) -> Vec<i8> {
    let mut t = vec![0i8; n];
    for &(i, v) in set {
        t[i] = v;
    }
    t
}

/// Blocks written by hand from the formats' definitions (not by the encoders): the decoders, the encoders and
/// the GPU must all agree with them.
#[test]
fn hand_made_blocks() {
    // HF packed, W[8, 3]: packed[1, 2] holds rows 1, 3, 5, 7 of column 2 in bits 0-1, 2-3, 4-5, 6-7.
    let mut hf = vec![0x55u8; 2 * 3];
    hf[3 + 2] = 0b00_10_01_00; // rows 1: −1, 3: 0, 5: +1, 7: −1
    let hf_t = values(24, &[(3 + 2, -1), (5 * 3 + 2, 1), (7 * 3 + 2, -1)]);

    // I2_S, W[1, 128]: byte 3 holds values 3, 35, 67, 99 at bits 7-6, 5-4, 3-2, 1-0; then the scale.
    let mut i2s = vec![0x55u8; 32];
    i2s[3] = 0b10_01_00_10; // 3: +1, 35: 0, 67: −1, 99: +1
    i2s.extend_from_slice(&1.5f32.to_le_bytes());
    i2s.resize(64, 0);
    let i2s_t = values(128, &[(3, 1), (67, -1), (99, 1)]);

    // TQ2_0, W[1, 256]: value 128h + 32l + m is bits 2l..2l+1 of qs[32h + m]; d = 0.5 (f16 0x3800).
    let mut tq2 = vec![0x55u8; 64];
    tq2[0] = 0b01_10_00_00; // values 0: −1, 32: −1, 64: +1, 96: 0
    tq2[32 + 5] = 0b10_00_01_10; // values 133: +1, 165: 0, 197: −1, 229: +1
    tq2.extend_from_slice(&[0x00, 0x38]);
    let tq2_t = values(
        256,
        &[(0, -1), (32, -1), (64, 1), (133, 1), (197, -1), (229, 1)],
    );

    // TQ1_0, W[1, 256]: byte = ⌈c·256/243⌉ for base-3 digits c (first most significant), digit = code.
    // All-zero digits (1,1,1,1,1): c = 121 → 128 in qs; qh holds 4 digits then a 0: c = 120 → 127.
    let mut tq1 = vec![128u8; 48];
    tq1.extend_from_slice(&[127; 4]);
    tq1[5] = 186; // digits (2,0,1,1,2): c = 176, ⌈176·256/243⌉ = 186 → values 5: +1, 37: −1, 133: +1
    tq1[32 + 8] = 70; // digits (0,2,1,1,0): c = 66 → 70 → values 168: −1, 184: +1, 232: −1
    tq1[48 + 2] = 203; // digits (2,1,0,1,0): c = 192 → 203 → values 242: +1, 250: −1
    tq1.extend_from_slice(&[0x00, 0x34]); // d = 0.25
    let tq1_t = values(
        256,
        &[
            (5, 1),
            (37, -1),
            (133, 1),
            (168, -1),
            (184, 1),
            (232, -1),
            (242, 1),
            (250, -1),
        ],
    );

    assert_eq!(decode_hf_packed(&hf, 8, 3).unwrap(), hf_t);
    assert_eq!(encode_hf_packed(&hf_t, 8, 3), hf);
    assert_eq!(decode_i2s(&i2s, 128).unwrap(), i2s_t);
    assert_eq!(i2s_scale(&i2s, 128).unwrap(), 1.5);
    assert_eq!(encode_i2s(&i2s_t, 1.5), i2s);
    assert_eq!(decode_tq2_0(&tq2, 256).unwrap(), (tq2_t.clone(), 0.5));
    assert_eq!(encode_tq2_0(&tq2_t, f16::from_f32(0.5)), tq2);
    assert_eq!(decode_tq1_0(&tq1, 256).unwrap(), (tq1_t.clone(), 0.25));
    assert_eq!(encode_tq1_0(&tq1_t, f16::from_f32(0.25)), tq1);

    let cases = [
        (TernaryLayout::HfPacked, &hf, 8, 3, &hf_t, None),
        (TernaryLayout::I2S, &i2s, 1, 128, &i2s_t, None),
        (TernaryLayout::Tq2_0, &tq2, 1, 256, &tq2_t, Some(0.5)),
        (TernaryLayout::Tq1_0, &tq1, 1, 256, &tq1_t, Some(0.25)),
    ];
    for_each_adapter(|ctx| {
        for ((layout, bytes, rows, cols, t, scale), on) in
            cases.into_iter().flat_map(|c| BOTH.map(|on| (c, on)))
        {
            let (packed, got_scale) = repack(ctx, on, layout, bytes, rows, cols).unwrap();
            assert_eq!(got_scale, scale, "{layout:?} on {on:?}");
            assert_eq!(packed, pack_ternary(t, rows, cols), "{layout:?} on {on:?}");
        }
    });
}

#[test]
fn rejects_mixed_block_scales_and_invalid_codes() {
    let (rows, cols) = (3, 512);
    let t = vec![1i8; rows * cols];
    let mut tq2 = encode_tq2_0(&t, f16::from_f32(1.0));
    let mut tq1 = encode_tq1_0(&t, f16::from_f32(1.0));
    // Block 4 gets another scale.
    tq2[4 * TQ2_0_BLOCK_BYTES + 64..4 * TQ2_0_BLOCK_BYTES + 66]
        .copy_from_slice(&f16::from_f32(2.0).to_le_bytes());
    tq1[4 * TQ1_0_BLOCK_BYTES + 52..4 * TQ1_0_BLOCK_BYTES + 54]
        .copy_from_slice(&f16::from_f32(2.0).to_le_bytes());
    assert!(decode_tq2_0(&tq2, rows * cols).is_err());
    assert!(decode_tq1_0(&tq1, rows * cols).is_err());
    // Code 3 in HF packed and I2_S.
    let mut hf = encode_hf_packed(&[0i8; 8 * 5], 8, 5);
    hf[7] = 0b11_01_01_01;
    let mut i2s = encode_i2s(&[0i8; 256], 1.0);
    i2s[40] = 0b01_11_01_01;
    assert!(decode_hf_packed(&hf, 8, 5).is_err());
    assert!(decode_i2s(&i2s, 256).is_err());

    for_each_adapter(|ctx| {
        for (layout, bytes, rows, cols, expect) in [
            (
                TernaryLayout::Tq2_0,
                &tq2,
                rows,
                cols,
                "block scales differ",
            ),
            (
                TernaryLayout::Tq1_0,
                &tq1,
                rows,
                cols,
                "block scales differ",
            ),
            (TernaryLayout::HfPacked, &hf, 8, 5, "invalid 2-bit codes"),
            (TernaryLayout::I2S, &i2s, 1, 256, "invalid 2-bit codes"),
        ] {
            for on in BOTH {
                let err = repack(ctx, on, layout, bytes, rows, cols)
                    .unwrap_err()
                    .to_string();
                assert!(
                    err.contains("test.weight") && err.contains(expect),
                    "{layout:?} on {on:?}: {err}"
                );
            }
        }
        // Zero tensors: no block carries a scale.
        let zeros = vec![0i8; 2 * 256];
        for on in BOTH {
            let tq2 = encode_tq2_0(&zeros, f16::ONE);
            let (packed, scale) = repack(ctx, on, TernaryLayout::Tq2_0, &tq2, 2, 256).unwrap();
            assert_eq!((packed, scale), (pack_ternary(&zeros, 2, 256), Some(0.0)));
        }
    });
}

#[test]
fn rejects_shapes_the_layout_cannot_hold() {
    for (layout, rows, cols) in [
        (TernaryLayout::HfPacked, 6, 16),
        (TernaryLayout::I2S, 3, 100),
        (TernaryLayout::Tq2_0, 4, 384),
        (TernaryLayout::Tq1_0, 1, 128),
    ] {
        let err = layout
            .check_shape("test.weight", rows, cols)
            .unwrap_err()
            .to_string();
        assert!(err.contains("test.weight"), "{err}");
    }
    // I2_S blocks run across rows: only the total must be a multiple of 128 (bitnet_b1_58-3B's 8640).
    assert!(TernaryLayout::I2S.check_shape("w", 3200, 8640).is_ok());
    assert!(TernaryLayout::I2S.check_shape("w", 32, 100).is_ok());
}

fn i2s_shape(rows_factor: usize, cols: usize) -> (usize, usize) {
    // The smallest row count that makes rows·cols a multiple of 128, times a factor.
    let unit = 128 / (cols & cols.wrapping_neg()).min(128);
    (unit * rows_factor, cols)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    #[test]
    fn random_hf_packed(rows4 in 1usize..48, cols in 1usize..700, seed in any::<u64>()) {
        for_each_adapter(|ctx| check(ctx, TernaryLayout::HfPacked, 4 * rows4, cols, seed));
    }

    #[test]
    fn random_i2s(rows_factor in 1usize..4, cols in 1usize..700, seed in any::<u64>()) {
        let (rows, cols) = i2s_shape(rows_factor, cols);
        for_each_adapter(|ctx| check(ctx, TernaryLayout::I2S, rows, cols, seed));
    }

    #[test]
    fn random_tq2_0(rows in 1usize..40, blocks in 1usize..5, seed in any::<u64>()) {
        for_each_adapter(|ctx| check(ctx, TernaryLayout::Tq2_0, rows, blocks * TQ_BLOCK, seed));
    }

    #[test]
    fn random_tq1_0(rows in 1usize..40, blocks in 1usize..5, seed in any::<u64>()) {
        for_each_adapter(|ctx| check(ctx, TernaryLayout::Tq1_0, rows, blocks * TQ_BLOCK, seed));
    }
}

/// Tensors in each layout queued without waiting, each into its rows of one fused weight (as q|k|v
/// and gate|up load): every row range equals its tensor's packing, each scale comes back in order,
/// and a tensor with invalid codes among valid ones is named when the queue finishes.
#[test]
fn a_queue_fuses_tensors_and_checks_each() {
    let cols = 512; // whole TQ blocks and I2_S blocks in every row
    let parts: Vec<(TernaryLayout, usize)> = vec![
        (TernaryLayout::HfPacked, 12),
        (TernaryLayout::Tq2_0, 3),
        (TernaryLayout::I2S, 5),
        (TernaryLayout::Tq1_0, 7),
    ];
    let mut rng = seeded(41);
    let encoded: Vec<(Vec<i8>, Vec<u8>, Option<f32>)> = parts
        .iter()
        .map(|&(layout, rows)| {
            let t = random_ternary(&mut rng, rows * cols);
            let scale = f16::from_f32(rng.random_range(0.5..3.0));
            let (bytes, expected_scale) = encode(layout, &t, rows, cols, scale);
            (t, bytes, expected_scale)
        })
        .collect();
    let rows: usize = parts.iter().map(|p| p.1).sum();
    for_each_adapter(|ctx| {
        let repacker = Repacker::new(ctx);
        // Each part alternately on the GPU and on the host, then the other way round.
        for host_first in [false, true] {
            let on = |i: usize| {
                if i.is_multiple_of(2) == host_first {
                    RunOn::Host
                } else {
                    RunOn::Gpu
                }
            };
            let fused =
                GpuBuffer::new(ctx, "fused", engine_bytes(rows, cols), BufferUsage::Storage)
                    .unwrap();
            let mut queue = repacker.queue(ctx, parts.len() + 1).unwrap();
            let mut first_row = 0;
            for (i, (&(layout, part_rows), (_, bytes, _))) in parts.iter().zip(&encoded).enumerate()
            {
                let name = format!("part.{layout:?}");
                let shape = (part_rows, cols);
                push(
                    ctx,
                    &mut queue,
                    on(i),
                    &name,
                    layout,
                    bytes,
                    shape,
                    &fused,
                    first_row,
                )
                .unwrap();
                first_row += part_rows;
            }
            let scales = pollster::block_on(queue.finish(ctx)).unwrap();
            let expected_scales: Vec<Option<f32>> = encoded.iter().map(|e| e.2).collect();
            assert_eq!(scales, expected_scales, "scales in submission order");
            let packed: Vec<u32> = pollster::block_on(fused.read_vec(ctx)).unwrap();
            let expected: Vec<u32> = parts
                .iter()
                .zip(&encoded)
                .flat_map(|(&(_, part_rows), (t, _, _))| pack_ternary(t, part_rows, cols))
                .collect();
            assert!(
                packed == expected,
                "fused rows differ from each part's packing (host first: {host_first})"
            );
        }

        // One bad tensor (an HF byte of code 3) between good ones, wherever each ran: the error
        // names it.
        let mut bad = encoded[0].1.clone();
        bad[3] = 0xff;
        for (good_on, bad_on) in [(RunOn::Gpu, RunOn::Host), (RunOn::Host, RunOn::Gpu)] {
            let mut queue = repacker.queue(ctx, 3).unwrap();
            for (name, bytes, on) in [
                ("good.a", &encoded[0].1, good_on),
                ("bad.b", &bad, bad_on),
                ("good.c", &encoded[0].1, good_on),
            ] {
                let out = GpuBuffer::new(ctx, name, engine_bytes(12, cols), BufferUsage::Storage)
                    .unwrap();
                let layout = TernaryLayout::HfPacked;
                push(
                    ctx,
                    &mut queue,
                    on,
                    name,
                    layout,
                    bytes,
                    (12, cols),
                    &out,
                    0,
                )
                .unwrap();
            }
            let err = pollster::block_on(queue.finish(ctx))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("bad.b") && err.contains("invalid 2-bit codes"),
                "bad tensor on {bad_on:?}: {err}"
            );
        }

        // Rows past the end of the weight and a full queue are refused before anything runs.
        let small =
            GpuBuffer::new(ctx, "small", engine_bytes(12, cols), BufferUsage::Storage).unwrap();
        let (hf, bytes, shape) = (TernaryLayout::HfPacked, &encoded[0].1, (12, cols));
        for on in BOTH {
            let mut queue = repacker.queue(ctx, 1).unwrap();
            let err = push(ctx, &mut queue, on, "late", hf, bytes, shape, &small, 1)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("late") && err.contains("do not fit"),
                "{on:?}: {err}"
            );
            push(ctx, &mut queue, on, "first", hf, bytes, shape, &small, 0).unwrap();
            let err = push(ctx, &mut queue, on, "second", hf, bytes, shape, &small, 0)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("second") && err.contains("holds 1"),
                "{on:?}: {err}"
            );
        }
    });
}
