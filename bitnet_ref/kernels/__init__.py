"""numba kernels: ternary products on packed weights, activation quantization (actquant, ternary, simd), float ops."""
