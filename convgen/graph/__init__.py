"""Networks as graphs: IR, shape inference, oracle, passes, memory planning, codegen."""
