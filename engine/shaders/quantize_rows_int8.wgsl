// Per-row absmax int8 quantization of one row chunk of a float table (the int8 LM head, built at load):
// s_r = max_k |W[r, k]| · (1/127), q[r, k] = W[r, k] / s_r rounded half away from zero, in [-127, 127].
// Codes: four int8 per u32 word (element k in byte k % 4, two's complement), each row padded with
// zeros to a whole vec4<u32> (16 codes) so the matvec can load a row as vec4s; scales: f32 [rows].
// One workgroup per row: a max over the row (exact in any order), then each lane packs whole words.
// Rounding is decided by comparisons, not by the quotient: WGSL's division is approximate, so the
// quotient only proposes q, and q is the largest integer with (q − ½)·m ≤ 127·|w| (m = max|w|),
// products that are exact for f16/bf16 inputs and correctly rounded for f32 ones: the CPU twin
// (reference::quantize_rows::quantize_rows_int8) makes the same comparisons and so matches bit for bit.
// Values are read in the table's dtype (DTYPE) by common/float_load.wgsl.

struct Params {
    cols: u32,
    rows: u32, // rows in this chunk
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> raw: array<u32>;
@group(0) @binding(2) var<storage, read_write> codes: array<u32>;
@group(0) @binding(3) var<storage, read_write> scales: array<f32>;

const LANES: u32 = 64u;
// 1/127 rounded to f32; the twin uses the same constant.
const INV_127: f32 = 0.007874016;

var<workgroup> partial: array<f32, LANES>;

// |w| / s as an integer in [0, 127], for a row with max |w| = m > 0.
fn magnitude_code(a: f32, m: f32) -> u32 {
    let target_value = 127.0 * a;
    var q = min(u32(target_value / m + 0.5), 127u);
    if (q < 127u && (f32(q) + 0.5) * m <= target_value) {
        q = q + 1u;
    } else if (q > 0u && (f32(q) - 0.5) * m > target_value) {
        q = q - 1u;
    }
    return q;
}

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let r = wid.x + wid.y * groups.x;
    if (r >= params.rows) {
        return; // uniform across the workgroup
    }
    let cols = params.cols;
    let base = r * cols;
    var m = 0.0;
    for (var k = lid; k < cols; k = k + LANES) {
        m = max(m, abs(load(base + k)));
    }
    partial[lid] = m;
    for (var stride = LANES / 2u; stride > 0u; stride = stride / 2u) {
        workgroupBarrier();
        if (lid < stride) {
            partial[lid] = max(partial[lid], partial[lid + stride]);
        }
    }
    workgroupBarrier();
    m = partial[0];

    let row_words = (cols + 15u) / 16u * 4u;
    for (var w = lid; w < row_words; w = w + LANES) {
        var word = 0u;
        for (var b = 0u; b < 4u; b = b + 1u) {
            let k = w * 4u + b;
            if (k < cols && m > 0.0) {
                let v = load(base + k);
                var q = i32(magnitude_code(abs(v), m));
                if (v < 0.0) {
                    q = -q;
                }
                word = word | ((bitcast<u32>(q) & 0xffu) << (b * 8u));
            }
        }
        codes[r * row_words + w] = word;
    }
    if (lid == 0u) {
        scales[r] = m * INV_127;
    }
}
