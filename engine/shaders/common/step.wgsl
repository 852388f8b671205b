// The per-step uniform of the forward kernels, bound at 0 by each: the host writes it once per step,
// so bind groups made at load serve every step.

struct StepParams {
    pos: u32,    // position of the step's first token
    tokens: u32, // tokens in this step
    row: u32,    // row of the step's first token in the activations (a batch: the sequence's slot)
    _pad: u32,
}

@group(0) @binding(0) var<uniform> step: StepParams;
