"""3x3 stride-1 convolution by Winograd minimal filtering, with lax.conv's parameters.

    y = winograd_conv(x, kernel, "SAME", m=4)        # x (N, H, W, Cin), kernel (3, 3, Cin, Cout)
    impl = choose(x.shape, kernel.shape, train=True)  # "xla" | "winograd2" | "winograd4"

F(m x m, 3 x 3) computes an m x m output tile from an (m+2) x (m+2) input tile with
(m+2)^2 multiplies per channel pair instead of 9 m^2: 2.25x fewer for m=2, 4x for m=4.
Kernel transform U = G g G^T, input tiles V = B^T d B, one batched matmul over the
(m+2)^2 tile positions ([pos, tiles, Cin] x [pos, Cin, Cout]), inverse Y = A^T M A.
The transforms are sparse small-integer (or simple fraction) linear combinations, written
as such (`_combine`) so XLA fuses them into elementwise passes.
The kernel is the HWIO kernel of `nn.Conv`/`lax.conv`, so ported weights load unchanged;
bias is the caller's. bfloat16 inputs are transformed, multiplied and accumulated in
float32 (F(4x4)'s transform coefficients up to 8 and 1/24 would cost bfloat16 its few
mantissa bits twice) and the result is cast back.
The backward is JAX's autodiff through these steps (the kernel gradient is the matmul's
transpose in the transform domain, the input gradient scatters the tiles back); on CPU it
already beats XLA's own conv backward on most layers, so there is no custom VJP.
`choose` is the per-shape rule measured by bench/bench_winograd.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

IMPLS = ("xla", "winograd2", "winograd4")
CHOICES = ("auto",) + IMPLS      # config.model.conv3x3, common.Conv's `conv3x3` field
# "auto" for a module that gradients flow through: the training rule whatever the
# backbone's BatchNorm mode (fine-tuning keeps BatchNorm in inference mode by default).
AUTO_TRAIN = "auto_train"


def for_training(choice: str) -> str:
    """The conv3x3 field of a backbone that will be trained: "auto" -> AUTO_TRAIN."""
    return AUTO_TRAIN if choice == "auto" else choice


def for_training_module(module):
    """`module` (a backbone) with `for_training` applied to its conv3x3 field, if it has one."""
    if getattr(module, "conv3x3", None) == "auto":
        return module.clone(conv3x3=AUTO_TRAIN)
    return module

# Lavin & Gray (2016), "Fast Algorithms for Convolutional Neural Networks": (B^T, G, A^T).
# Both compute the correlation y_i = sum_k d_{i+k} g_k that lax.conv computes.
_MATRICES = {
    2: (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64),
        np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)),
    4: (np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                  [0, 1, -1, 8, -8, 1]], np.float64)),
}


def _combine(mat: np.ndarray, parts: Sequence) -> list:
    """[sum_k mat[u, k] * parts[k] for each row u], skipping zeros and unit multiplies."""
    out = []
    for row in mat:
        acc = None
        for c, p in zip(row, parts):
            if c == 0:
                continue
            term = p if c in (1, -1) else p * float(abs(c))
            if acc is None:
                acc = term if c > 0 else -term
            else:
                acc = acc + term if c > 0 else acc - term
        out.append(acc if acc is not None else jnp.zeros_like(parts[0]))
    return out


def _transform2d(mat: np.ndarray, grid: list[list], one=None) -> list[list]:
    """mat @ D @ mat^T for a 2-D grid of arrays D[i][j]: rows first, then columns.
    `one`: a runtime 1.0 (`_runtime_one`) that keeps the first pass's results in memory
    (`_materialise`); None: an optimization barrier between the passes, which XLA:CPU
    expands before fusion (F(2x2)'s programs were tuned with it in place)."""
    cols = list(zip(*grid))                                   # cols[j][i]
    first = [_combine(mat, list(c)) for c in cols]
    first = lax.optimization_barrier(first) if one is None else \
        [_materialise(c, one) for c in first]
    rows = list(zip(*first))
    return [_combine(mat, list(r)) for r in rows]             # [u][v]


def _runtime_one(kernel):
    """1.0 as XLA cannot know it: from the kernel's values, without a gradient."""
    return 1.0 + 0.0 * lax.stop_gradient(kernel.reshape(-1)[0].astype(jnp.float32))


def _materialise(arrays: list, one) -> list:
    """`arrays` unchanged (x / 1.0 is exact), written to memory before their consumers run.
    Fused into the second pass, each of F(4x4)'s 36 outputs would recompute the first pass's
    terms it reads from the input, so the 36 output fusions would each sweep the whole
    input (16 strided reads per element); materialised, each reads a quarter of it. XLA:CPU
    expands `lax.optimization_barrier` before fusion, so a barrier does not stop this; a
    divide does: XLA does not duplicate an expensive op into consumers that reuse its
    elements."""
    return [a / one for a in arrays]


def _pads(padding) -> tuple[tuple[int, int], tuple[int, int]]:
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(f"winograd padding: expected SAME, VALID or pairs, got {padding!r}")
        p = 1 if padding.upper() == "SAME" else 0
        return (p, p), (p, p)
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def transform_kernel(kernel, m: int):
    """U = G g G^T of an HWIO (3, 3, Cin, Cout) kernel: ((m+2)^2, Cin, Cout), float32."""
    _, g_mat, _ = _MATRICES[m]
    k = kernel.astype(jnp.float32)
    u = _transform2d(g_mat, [[k[i, j] for j in range(3)] for i in range(3)])
    return jnp.stack([c for row in u for c in row])


def _input_tiles(x, m: int, pads, out_hw, one=None):
    """V = B^T d B of the overlapping (m+2)^2 tiles: ((m+2)^2, N*th*tw, Cin)."""
    bt, _, _ = _MATRICES[m]
    a = m + 2
    n, _, _, c = x.shape
    th, tw = -(-out_hw[0] // m), -(-out_hw[1] // m)
    # Pad so every tile, including the ragged last row and column, lies inside.
    hp, wp = th * m + 2, tw * m + 2
    xp = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), (pads[0][0], hp - x.shape[1] - pads[0][0], 0),
                                             (pads[1][0], wp - x.shape[2] - pads[1][0], 0), (0, 0, 0)])
    grid = [[lax.slice(xp, (0, i, j, 0), (n, i + (th - 1) * m + 1, j + (tw - 1) * m + 1, c),
                       (1, m, m, 1)) for j in range(a)] for i in range(a)]
    v = _transform2d(bt, grid, one)
    # XLA:CPU expands this barrier before fusion, yet without it F(2x2)'s compiled programs
    # differ; kept as they were measured.
    v = lax.optimization_barrier([t for row in v for t in row])
    return jnp.stack(v).reshape(a * a, n * th * tw, c), (th, tw)


def _untile(mm, m: int, n: int, tiles, out_hw, one=None):
    """Y = A^T M A per tile, the m x m tiles laid side by side and cropped to out_hw."""
    _, _, at = _MATRICES[m]
    a = m + 2
    th, tw = tiles
    cout = mm.shape[-1]
    mm = mm.reshape(a, a, n, th, tw, cout)
    y = lax.optimization_barrier(
        _transform2d(at, [[mm[i, j] for j in range(a)] for i in range(a)], one))
    # Interleave: y[u][v] (n, th, tw, cout) is output pixel (th*m + u, tw*m + v).
    rows = [jnp.stack(row, axis=3).reshape(n, th, tw * m, cout) for row in y]
    y = jnp.stack(rows, axis=2).reshape(n, th * m, tw * m, cout)
    return y[:, :out_hw[0], :out_hw[1]]


def winograd_conv(x, kernel, padding="SAME", m: int = 4):
    """lax.conv_general_dilated(x, kernel, (1, 1), padding) for NHWC x and a 3x3 HWIO kernel,
    by F(m x m, 3 x 3), m in (2, 4); padding "SAME", "VALID" or ((top, bottom), (left, right))."""
    if m not in _MATRICES:
        raise ValueError(f"winograd tile: expected m in {tuple(_MATRICES)}, got {m}")
    if kernel.shape[:2] != (3, 3) or kernel.shape[2] != x.shape[3]:
        raise ValueError(f"winograd: need a (3, 3, {x.shape[3]}, Cout) kernel, got {kernel.shape}")
    pads = _pads(padding)
    out_hw = (x.shape[1] + sum(pads[0]) - 2, x.shape[2] + sum(pads[1]) - 2)
    # F(2x2) keeps its passes fused: materialised, its layers ran slower (docs/benchmarks.md,
    # "F(4x4)'s first pass in memory").
    one = _runtime_one(kernel) if m == 4 else None
    v, tiles = _input_tiles(x.astype(jnp.float32), m, pads, out_hw, one)
    u = transform_kernel(kernel, m)
    mm = lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))),
                         precision=lax.Precision.HIGHEST)     # (pos, tiles, Cout)
    return _untile(mm, m, x.shape[0], tiles, out_hw, one).astype(x.dtype)


def choose(x_shape, kernel_shape, strides=(1, 1), *, train: bool = False,
           backend: str | None = None) -> str:
    """"xla", "winograd2" or "winograd4" for a conv of NHWC `x_shape` by HWIO `kernel_shape`:
    the faster on this backend for this layer shape, as bench/bench_winograd.py measured it
    on CPU (bench/results/winograd.jsonl). `train` asks for the faster forward+backward;
    elsewhere than CPU XLA's own convolutions are assumed best (not measured)."""
    backend = backend or jax.default_backend()
    kh, kw, cin, cout = kernel_shape
    if backend != "cpu" or (kh, kw) != (3, 3) or tuple(strides) != (1, 1):
        return "xla"
    return _cpu_rule(x_shape[1], cin, train)


def resolve(choice: str, x_shape, kernel_shape, strides=(1, 1), *, train: bool = False) -> str:
    """The implementation `choice` (one of CHOICES) means for this layer: "auto" is `choose`;
    a forced Winograd applies to 3x3 stride-1 layers only, the rest stay "xla"."""
    if choice not in CHOICES + (AUTO_TRAIN,):
        raise ValueError(f"conv3x3 impl: expected one of {CHOICES}, got {choice!r}")
    if choice in ("auto", AUTO_TRAIN):
        return choose(x_shape, kernel_shape, strides, train=train or choice == AUTO_TRAIN)
    if tuple(kernel_shape[:2]) != (3, 3) or tuple(strides) != (1, 1):
        return "xla"
    return choice


def _cpu_rule(hw: int, cin: int, train: bool) -> str:
    """From VGG19's and ResNet50V2's layers at 224 px. Narrow inputs (VGG's 3 channels,
    64 below 56 px) and 7x7 maps: the transforms cost more than the matmul saves. Training:
    XLA:CPU's conv backward is slow, F(2x2) wins wherever the forward is not hopeless; at 64
    channels and 56 px a layer alone backpropagates faster through XLA's convolution, but
    inside ResNet50V2's whole step XLA's kernel gradient there ran several times slower than
    alone, and F(2x2) made the step faster (docs/benchmarks.md, "3x3 layers at 64
    channels"). Inference: F(4x4) on wide layers from 28 to 112 px, F(2x2) at 14 px (F(4x4)'s
    ragged and few tiles lose there)."""
    if train:
        wide = cin >= 128 or (cin >= 64 and hw >= 56)
        return "winograd2" if wide and hw >= 14 else "xla"
    if cin >= 128 and 28 <= hw <= 112:
        return "winograd4"
    if cin >= 128 and 14 <= hw < 28:
        return "winograd2"
    return "xla"
