// Float tensors read in their file dtype (no shader-f16 needed). `raw` is the kernel's binding of the
// tensor's bytes as little-endian u32 words; `load(i)` is value i as f32.

override DTYPE: u32 = 0u; // 0: f32, 1: f16, 2: bf16 (16-bit values: two per little-endian u32)

// f16 bits to f32, exact for subnormals too (no shader-f16 needed).
fn f16_to_f32(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let exponent = (h >> 10u) & 0x1fu;
    let mantissa = h & 0x3ffu;
    if (exponent == 0u) {
        return bitcast<f32>(sign | bitcast<u32>(ldexp(f32(mantissa), -24)));
    }
    if (exponent == 31u) {
        return bitcast<f32>(sign | 0x7f800000u | (mantissa << 13u));
    }
    return bitcast<f32>(sign | ((exponent + 112u) << 23u) | (mantissa << 13u));
}

fn load(i: u32) -> f32 {
    if (DTYPE == 0u) {
        return bitcast<f32>(raw[i]);
    }
    let half = (raw[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu;
    if (DTYPE == 1u) {
        return f16_to_f32(half);
    }
    return bitcast<f32>(half << 16u);
}
