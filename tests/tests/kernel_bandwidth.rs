//! `copy_bandwidth.wgsl`: the read kernel's checksum equals the CPU twin's, the copy equals its source,
//! and `measure` runs over several chunks (it verifies both checksums itself). Speed is not tested.

use rand::Rng;
use tern::gpu::{BufferUsage, GpuBuffer};
use tern::ops::bandwidth::{measure_with_clock, CopyBandwidth};
use tern::reference::bandwidth::checksum;
use tern_tests::{for_each_adapter, seeded};

#[test]
fn read_checksum_and_copy() {
    // 4 KiB + 16 B: the last invocations get one vec4 fewer than the others.
    let mut rng = seeded(11);
    let words: Vec<u32> = (0..1028).map(|_| rng.random()).collect();
    for_each_adapter(|ctx| {
        let kernel = CopyBandwidth::new(ctx);
        let src = GpuBuffer::from_slice(ctx, "src", &words, BufferUsage::Storage).unwrap();
        let dst = GpuBuffer::new(ctx, "dst", src.size, BufferUsage::Storage).unwrap();
        let sums_bytes = CopyBandwidth::sums_bytes(src.size).unwrap();
        let sums = GpuBuffer::new(ctx, "sums", sums_bytes, BufferUsage::Storage).unwrap();
        let read = kernel.bind_read(ctx, &src, &sums).unwrap();
        let copy = kernel.bind_copy(ctx, &src, &dst).unwrap();
        pollster::block_on(ctx.run(|encoder| {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            kernel.dispatch(&mut pass, &read);
            kernel.dispatch(&mut pass, &copy);
        }))
        .unwrap();
        let sums: Vec<u32> = pollster::block_on(sums.read_vec(ctx)).unwrap();
        assert_eq!(checksum(&sums), checksum(&words), "read checksum");
        let copied: Vec<u32> = pollster::block_on(dst.read_vec(ctx)).unwrap();
        assert_eq!(copied, words, "copy");
    });
}

#[test]
fn measure_over_chunks() {
    for_each_adapter(|ctx| {
        let start = std::time::Instant::now();
        // 3 MiB + 48 B in 1 MiB chunks: four chunks, the last one short.
        let report =
            pollster::block_on(measure_with_clock(ctx, (3 << 20) + 48, 1 << 20, 2, || {
                start.elapsed().as_secs_f64()
            }))
            .unwrap();
        assert_eq!(report.chunks, 4);
        assert_eq!(report.bytes, (3 << 20) + 48);
        assert!(
            report.read_gbps.is_finite() && report.read_gbps > 0.0,
            "{report:?}"
        );
        assert!(
            report.copy_gbps.is_finite() && report.copy_gbps > 0.0,
            "{report:?}"
        );
    });
}
