"""lowbit.emulate: torch integration (fake-quant ops, quantized modules,
model patching). Not built yet: see the project's open issues."""
