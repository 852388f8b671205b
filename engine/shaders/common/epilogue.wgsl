// The projection epilogues shared by the ternary and dense projection kernels (each declares `out`):
// 0 store, 1 add into out (the residual stream), 2 relu(g)²·u, 3 silu(g)·u. The gated ones combine a
// gate row's value with its up row's.

override EPILOGUE: u32 = 0u;

fn gated() -> bool {
    return EPILOGUE >= 2u;
}

// Writes out[o] from a row's value and, for the gated epilogues, its up row's value.
fn write_output(o: u32, value: f32, up_value: f32) {
    switch EPILOGUE {
        case 0u: {
            out[o] = value;
        }
        case 1u: {
            out[o] = out[o] + value;
        }
        case 2u: {
            let g = max(value, 0.0);
            out[o] = g * g * up_value;
        }
        default: {
            out[o] = value / (1.0 + exp(-value)) * up_value;
        }
    }
}
