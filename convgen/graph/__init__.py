"""Networks as graphs: IR, tracing, shape inference, oracle, passes, layout and memory
planning, lowering to steps (each backend generates a network's code from them), CompiledModel."""
