use tern::gpu::{BufferUsage, GpuBuffer};
use tern::ops::attention::*;
use tern::ops::dense_matvec::{DenseMatvec, MatvecLayout};
use tern::ops::embedding::{DenseTable, Embedding, TableDtype};
use tern::ops::select::*;
use tern::ops::StepParams;
use tern_tests::for_each_adapter;
#[test]
fn bench() {
    let (rows, cols) = (128_256usize, 2560usize);
    let bytes = vec![0x3fu8; rows * cols * 2];
    for_each_adapter(|ctx| {
        let table = DenseTable::upload(ctx, "w", TableDtype::Bf16, rows, cols, &bytes).unwrap();
        let step = GpuBuffer::from_slice(
            ctx,
            "s",
            &[StepParams {
                pos: 2999,
                tokens: 1,
                _pad: [0; 2],
            }],
            BufferUsage::Uniform,
        )
        .unwrap();
        let x = GpuBuffer::from_slice(ctx, "x", &vec![0.5f32; cols], BufferUsage::Storage).unwrap();
        let out = GpuBuffer::new(ctx, "o", (rows * 4) as u64, BufferUsage::Storage).unwrap();
        let time = |name: &str, f: &dyn Fn(&mut wgpu::ComputePass<'_>)| {
            pollster::block_on(ctx.run(|e| {
                let mut p = e.begin_compute_pass(&Default::default());
                f(&mut p);
            }))
            .unwrap();
            let t = std::time::Instant::now();
            for _ in 0..3 {
                pollster::block_on(ctx.run(|e| {
                    let mut p = e.begin_compute_pass(&Default::default());
                    f(&mut p);
                }))
                .unwrap();
            }
            let ms = t.elapsed().as_secs_f64() * 1000.0 / 3.0;
            eprintln!("{} {name}: {ms:.2} ms", ctx.adapter_name());
            ms
        };
        for layout in [
            MatvecLayout::RowPerInvocation,
            MatvecLayout::RowPerWorkgroup,
        ] {
            let k = DenseMatvec::with_layout(ctx, TableDtype::Bf16, cols, layout);
            let b = k.bind(ctx, &table, &step, &x, &out).unwrap();
            let ms = time(&format!("lm head {layout:?}"), &|p| k.dispatch(p, &b));
            eprintln!("  {:.2} GB/s", (rows * cols * 2) as f64 / ms / 1e6);
        }
        let emb = Embedding::new(ctx, TableDtype::Bf16);
        let ids = GpuBuffer::from_slice(ctx, "ids", &[5u32], BufferUsage::Storage).unwrap();
        let eb = emb.bind(ctx, &table, &step, &ids, &x).unwrap();
        time("embedding", &|p| emb.dispatch(p, &eb));
        let am = Argmax::new(ctx);
        let ab = am.bind(ctx, rows, &out, &ids).unwrap();
        time("argmax", &|p| am.dispatch(p, &ab, 1));
        let tk = TopK::new(ctx);
        let tko = GpuBuffer::new(ctx, "t", 64 * 8, BufferUsage::Storage).unwrap();
        let tb = tk.bind(ctx, rows, 64, &out, &tko).unwrap();
        time("topk64", &|p| tk.dispatch(p, &tb, 1));
        let shape = AttentionShape {
            heads: 20,
            kv_heads: 5,
            head_dim: 128,
            max_seq: 4096,
        };
        let q = GpuBuffer::new(ctx, "q", 30 * 128 * 4, BufferUsage::Storage).unwrap();
        let kc = GpuBuffer::new(
            ctx,
            "k",
            (shape.cache_len() * 4) as u64,
            BufferUsage::Storage,
        )
        .unwrap();
        let vc = GpuBuffer::new(
            ctx,
            "v",
            (shape.cache_len() * 4) as u64,
            BufferUsage::Storage,
        )
        .unwrap();
        let o = GpuBuffer::new(ctx, "o", 20 * 128 * 4, BufferUsage::Storage).unwrap();
        let bufs = AttentionBuffers {
            step: &step,
            q: &q,
            q_stride: 30 * 128,
            k_cache: &kc,
            v_cache: &vc,
            out: &o,
        };
        let d = AttentionDecode::new(ctx);
        let db = d.bind(ctx, shape, &bufs).unwrap();
        time("decode attention pos 2999", &|p| d.dispatch(p, &db, 2999));
        let pf = AttentionPrefill::new(ctx);
        let pb = pf.bind(ctx, shape, &bufs).unwrap();
        time("prefill attention T=1 pos 2999", &|p| {
            pf.dispatch(p, &pb, 1)
        });
    });
}
